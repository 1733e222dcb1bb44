import type { Conversation, Message, User } from '../src/types'

export function message(overrides: Partial<Message>): Message {
  return {
    id: 1,
    role: 'user',
    text: 'hello',
    status: 'answered',
    command: null,
    reply_to_id: null,
    user_id: 7,
    model: null,
    prompt_tokens: 0,
    completion_tokens: 0,
    latency_ms: null,
    delivered_at: null,
    created_at: '2025-11-20T10:00:00Z',
    ...overrides,
  }
}

export function conversation(overrides: Partial<Conversation>): Conversation {
  return {
    id: 1,
    platform: 'telegram',
    key: '-100200300',
    created_at: '2025-11-20T10:00:00Z',
    messages: 4,
    last_message_id: 40,
    last_text: 'see you',
    last_at: '2025-11-20T10:05:00Z',
    ...overrides,
  }
}

export function user(overrides: Partial<User>): User {
  return {
    id: 1,
    platform: 'slack',
    platform_user_id: 'U0123',
    name: 'Ann',
    banned: false,
    rate_limit: null,
    created_at: '2025-11-01T10:00:00Z',
    last_seen_at: '2025-11-20T10:00:00Z',
    messages: 12,
    ...overrides,
  }
}
