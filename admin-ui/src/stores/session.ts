// The signed-in admin: the bearer token and the username, kept in sessionStorage so that a
// reload keeps the session in this tab (and only in this tab).
import { defineStore } from 'pinia'
import { computed, ref } from 'vue'
import * as api from '../api'

export const STORAGE_KEY = 'zapa.admin.session'

interface StoredSession {
  token: string
  username: string
  /** Epoch milliseconds after which the token is no longer valid. */
  expiresAt: number | null
}

function storage(): Storage | null {
  try {
    return window.sessionStorage
  } catch {
    return null // storage disabled: the session lasts until the page is left
  }
}

function readStored(): StoredSession | null {
  const raw = storage()?.getItem(STORAGE_KEY)
  if (!raw) return null
  try {
    const value = JSON.parse(raw) as Partial<StoredSession>
    if (typeof value.token !== 'string' || !value.token) return null
    return {
      token: value.token,
      username: typeof value.username === 'string' ? value.username : '',
      expiresAt: typeof value.expiresAt === 'number' ? value.expiresAt : null,
    }
  } catch {
    return null
  }
}

export type EndReason = 'signed_out' | 'expired'

export const useSessionStore = defineStore('session', () => {
  const stored = readStored()
  const token = ref<string | null>(stored?.token ?? null)
  const username = ref<string | null>(stored?.username ?? null)
  const expiresAt = ref<number | null>(stored?.expiresAt ?? null)
  /** Why the last session ended, when the sign-in page should say so. */
  const endedBecause = ref<EndReason | null>(null)

  const signedIn = computed(() => token.value !== null)

  function persist(): void {
    const store = storage()
    if (!store) return
    if (token.value === null) {
      store.removeItem(STORAGE_KEY)
    } else {
      const value: StoredSession = {
        token: token.value,
        username: username.value ?? '',
        expiresAt: expiresAt.value,
      }
      store.setItem(STORAGE_KEY, JSON.stringify(value))
    }
  }

  /** Forget the session (the server is not told: see `signOut`). */
  function clear(reason: EndReason | null = null): void {
    token.value = null
    username.value = null
    expiresAt.value = null
    endedBecause.value = reason
    persist()
  }

  /** Drop a token whose lifetime has passed; true while the session is still valid. */
  function checkExpiry(now: number = Date.now()): boolean {
    if (token.value !== null && expiresAt.value !== null && expiresAt.value <= now) {
      clear('expired')
    }
    return token.value !== null
  }

  /** Sign in; rejects with the API's error (wrong password, lock …) and stays signed out. */
  async function signIn(name: string, password: string): Promise<void> {
    const grant = await api.login(name, password)
    token.value = grant.access_token
    username.value = name
    expiresAt.value =
      typeof grant.expires_in === 'number' && grant.expires_in > 0
        ? Date.now() + grant.expires_in * 1000
        : null
    endedBecause.value = null
    persist()
  }

  /** Revoke the token on the server (best effort) and forget it here. */
  async function signOut(): Promise<void> {
    const current = token.value
    clear('signed_out')
    if (current) {
      try {
        await api.logout(current)
      } catch {
        // The server could not be told (offline, 503): the token still expires by itself.
      }
    }
  }

  return { token, username, expiresAt, endedBecause, signedIn, clear, checkExpiry, signIn, signOut }
})
