// Test helpers: a fetch stub that answers like the admin API, and an app (Pinia + router on
// memory history) to mount views in.
import { vi } from 'vitest'
import { createPinia, setActivePinia, type Pinia } from 'pinia'
import { createMemoryHistory, type Router } from 'vue-router'
import { createAppRouter } from '../src/router'
import { STORAGE_KEY } from '../src/stores/session'

export interface Call {
  method: string
  url: string
  path: string
  query: URLSearchParams
  headers: Record<string, string>
  body: unknown
}

export type Reply = { status?: number; body?: unknown; headers?: Record<string, string> }
export type Handler = (call: Call) => Reply | Promise<Reply>

export function jsonResponse({ status = 200, body, headers = {} }: Reply): Response {
  const text = body === undefined ? '' : JSON.stringify(body)
  return new Response(text, {
    status,
    headers: { 'Content-Type': 'application/json', ...headers },
  })
}

/** Replace `fetch`; every call is recorded and answered by `handler`. */
export function stubFetch(handler: Handler): Call[] {
  const calls: Call[] = []
  const fake = vi.fn(async (input: RequestInfo | URL, init: RequestInit = {}) => {
    const url = String(input)
    const parsed = new URL(url, 'http://localhost')
    const headers: Record<string, string> = {}
    new Headers(init.headers).forEach((value, name) => {
      headers[name.toLowerCase()] = value
    })
    const call: Call = {
      method: (init.method ?? 'GET').toUpperCase(),
      url,
      path: parsed.pathname,
      query: parsed.searchParams,
      headers,
      body: typeof init.body === 'string' ? JSON.parse(init.body) : undefined,
    }
    calls.push(call)
    return jsonResponse(await handler(call))
  })
  vi.stubGlobal('fetch', fake)
  return calls
}

/** Put a signed-in session where the store finds it on creation. */
export function storeSession(token = 'tok-1', username = 'ops', expiresAt: number | null = null): void {
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify({ token, username, expiresAt }))
}

export function freshApp(): { pinia: Pinia; router: Router } {
  const pinia = createPinia()
  setActivePinia(pinia)
  const router = createAppRouter(createMemoryHistory('/admin/'))
  return { pinia, router }
}

/** Let pending promises and Vue's update queue settle. */
export async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 0))
  }
}
