// The one client for the admin API: every request goes through `request`, which adds the
// bearer token, turns error bodies into an `ApiError`, and ends the session on a 401.
import type { Router } from 'vue-router'
import { useSessionStore } from './stores/session'
import type {
  AdminAccount,
  Conversation,
  Health,
  LoginGrant,
  Message,
  Page,
  Stats,
  User,
  UserChanges,
} from './types'

/** An error answer of the API (or no answer at all: `status` 0, `error` "network_error"). */
export class ApiError extends Error {
  readonly status: number
  readonly error: string
  readonly detail: string
  readonly field: string | null
  /** Seconds to wait before trying again (from `Retry-After`), or null. */
  readonly retryAfter: number | null
  /** The parsed JSON body, when there was one. */
  readonly body: unknown

  constructor(init: {
    status: number
    error: string
    detail: string
    field?: string | null
    retryAfter?: number | null
    body?: unknown
  }) {
    super(init.detail || init.error)
    this.name = 'ApiError'
    this.status = init.status
    this.error = init.error
    this.detail = init.detail
    this.field = init.field ?? null
    this.retryAfter = init.retryAfter ?? null
    this.body = init.body
  }
}

export type QueryValue = string | number | boolean | null | undefined

export interface RequestOptions {
  method?: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE'
  query?: Record<string, QueryValue>
  body?: unknown
  /** Send the session's bearer token, and treat a 401 as the end of the session (default true). */
  auth?: boolean
  /** A bearer token to send on a call made with `auth: false` (sign-out). */
  token?: string
}

let boundRouter: Router | null = null

/** The router to send the visitor to the sign-in page with when the session ends. */
export function bindRouter(router: Router | null): void {
  boundRouter = router
}

/** `Retry-After` in seconds: either delta-seconds or an HTTP date. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | null {
  if (value === null || value.trim() === '') return null
  const trimmed = value.trim()
  if (/^\d+$/.test(trimmed)) return Number(trimmed)
  const at = Date.parse(trimmed)
  if (Number.isNaN(at)) return null
  return Math.max(0, Math.ceil((at - now) / 1000))
}

function buildUrl(path: string, query?: Record<string, QueryValue>): string {
  const params = new URLSearchParams()
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value === null || value === undefined || value === '') continue
    params.append(name, String(value))
  }
  const search = params.toString()
  return search ? `${path}?${search}` : path
}

function errorFrom(response: Response, body: unknown): ApiError {
  const fields = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>
  const error = typeof fields.error === 'string' ? fields.error : `http_${response.status}`
  const detail =
    typeof fields.detail === 'string'
      ? fields.detail
      : response.statusText || `The server answered ${response.status}.`
  return new ApiError({
    status: response.status,
    error,
    detail,
    field: typeof fields.field === 'string' ? fields.field : null,
    retryAfter: parseRetryAfter(response.headers.get('Retry-After')),
    body,
  })
}

function sessionEnded(): void {
  const session = useSessionStore()
  session.clear('expired')
  const router = boundRouter
  if (!router) return
  const current = router.currentRoute.value
  if (current.name === 'login') return
  const next = current.fullPath
  void router.replace({ name: 'login', query: next && next !== '/' ? { next } : {} })
}

/** Call the API; resolves with the parsed JSON body, rejects with an `ApiError`. */
export async function request<T>(path: string, options: RequestOptions = {}): Promise<T> {
  const auth = options.auth ?? true
  const headers: Record<string, string> = { Accept: 'application/json' }
  if (options.body !== undefined) headers['Content-Type'] = 'application/json'
  const token = auth ? useSessionStore().token : options.token
  if (token) headers.Authorization = `Bearer ${token}`
  let response: Response
  try {
    response = await fetch(buildUrl(path, options.query), {
      method: options.method ?? 'GET',
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      credentials: 'same-origin',
    })
  } catch {
    throw new ApiError({
      status: 0,
      error: 'network_error',
      detail: 'The server could not be reached. Check your connection and try again.',
    })
  }
  const text = await response.text()
  let body: unknown = undefined
  if (text) {
    try {
      body = JSON.parse(text)
    } catch {
      body = undefined
    }
  }
  if (!response.ok) {
    if (response.status === 401 && auth) sessionEnded()
    throw errorFrom(response, body)
  }
  if (text && body === undefined) {
    throw new ApiError({
      status: response.status,
      error: 'invalid_response',
      detail: 'The server sent an answer that is not JSON.',
    })
  }
  return body as T
}

// The routes, one function each.

export function login(username: string, password: string): Promise<LoginGrant> {
  return request<LoginGrant>('/api/auth/login', {
    method: 'POST',
    body: { username, password },
    auth: false,
  })
}

/** Revoke the token server-side. A 401 here only means it was already gone. */
export async function logout(token: string): Promise<void> {
  try {
    await request('/api/auth/logout', { method: 'POST', auth: false, token })
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return
    throw error
  }
}

export function me(): Promise<AdminAccount> {
  return request<AdminAccount>('/api/auth/me')
}

export interface ListFilters {
  platform?: string | null
  q?: string | null
  limit?: number
  cursor?: number | null
}

export function listConversations(filters: ListFilters = {}): Promise<Page<Conversation>> {
  return request<Page<Conversation>>('/api/conversations', { query: { ...filters } })
}

export function listMessages(
  conversationId: number,
  page: { limit?: number; cursor?: number | null } = {},
): Promise<Page<Message>> {
  return request<Page<Message>>(`/api/conversations/${conversationId}/messages`, {
    query: { ...page },
  })
}

export function listUsers(filters: ListFilters = {}): Promise<Page<User>> {
  return request<Page<User>>('/api/users', { query: { ...filters } })
}

export function updateUser(id: number, changes: UserChanges): Promise<User> {
  return request<User>(`/api/users/${id}`, { method: 'PATCH', body: changes })
}

export function getStats(days: number): Promise<Stats> {
  return request<Stats>('/api/stats', { query: { days } })
}

/** The health report; a 503 that carries one (the service is unavailable) is still a report. */
export async function getHealth(): Promise<Health> {
  try {
    return await request<Health>('/api/health')
  } catch (error) {
    if (
      error instanceof ApiError &&
      error.status === 503 &&
      typeof error.body === 'object' &&
      error.body !== null &&
      'checks' in error.body
    ) {
      return error.body as Health
    }
    throw error
  }
}
