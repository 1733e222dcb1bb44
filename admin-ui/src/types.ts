// The admin API's JSON shapes (see the service's /api/openapi.json).

export type Platform = 'telegram' | 'slack' | 'webhook'
export const PLATFORMS: readonly Platform[] = ['telegram', 'slack', 'webhook']

export interface Page<T> {
  items: T[]
  next_cursor: number | null
}

export interface LoginGrant {
  access_token: string
  token_type: string
  expires_in: number
}

export interface AdminAccount {
  id: number
  username: string
  created_at: string
  last_login_at: string | null
}

export interface Conversation {
  id: number
  platform: string
  key: string
  created_at: string
  messages: number
  last_message_id: number
  last_text: string | null
  last_at: string | null
}

export type MessageRole = 'user' | 'assistant' | 'system'
/** `received` (not answered yet), `answered`, `failed`, `rate_limited` or `banned`. */
export type MessageStatus = 'received' | 'answered' | 'failed' | 'rate_limited' | 'banned'

export interface Message {
  id: number
  role: MessageRole | string
  text: string
  status: MessageStatus | string
  command: string | null
  reply_to_id: number | null
  user_id: number | null
  model: string | null
  prompt_tokens: number
  completion_tokens: number
  latency_ms: number | null
  delivered_at: string | null
  created_at: string
}

export interface User {
  id: number
  platform: string
  platform_user_id: string
  name: string | null
  banned: boolean
  rate_limit: string | null
  created_at: string
  last_seen_at: string
  messages: number
}

export interface UserChanges {
  banned?: boolean
  rate_limit?: string | null
}

export interface Stats {
  days: number
  messages_per_day: { day: string; platform: string; messages: number }[]
  tokens_per_day: { day: string; prompt_tokens: number; completion_tokens: number }[]
  latency_per_day?: { day: string; p50_ms: number | null; p95_ms: number | null }[]
  latency_p50_ms: number | null
  latency_p95_ms: number | null
  answered: number
  failed: number
  rate_limited: number
}

export interface HealthCheck {
  status: string
  duration_ms?: number
  error?: string
}

export interface AdapterHealth {
  status: string
  last_message_at?: string | null
  failed_last_hour?: number
}

export interface Health {
  status: string
  checks: Record<string, HealthCheck>
  adapters?: Record<string, AdapterHealth>
  queue?: { depth: number }
}
