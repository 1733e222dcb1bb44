import type { LocationQuery } from 'vue-router'

/** The conversation list's last filters, so "back to the list" from a transcript keeps them. */
export const lastConversationsQuery: { value: LocationQuery } = { value: {} }
