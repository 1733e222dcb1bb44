import { beforeEach, describe, expect, it, vi } from 'vitest'
import { flushPromises } from '@vue/test-utils'
import {
  ApiError,
  getHealth,
  listConversations,
  listUsers,
  login,
  me,
  parseRetryAfter,
  updateUser,
} from '../src/api'
import { STORAGE_KEY, useSessionStore } from '../src/stores/session'
import { freshApp, storeSession, stubFetch } from './helpers'

beforeEach(() => {
  sessionStorage.clear()
})

describe('the API client', () => {
  it('sends the bearer token on every signed-in call', async () => {
    storeSession('tok-abc')
    freshApp()
    const calls = stubFetch(() => ({ body: { id: 1, username: 'ops' } }))
    await me()
    await listUsers({ q: 'ann' })
    expect(calls.map((c) => c.headers.authorization)).toEqual(['Bearer tok-abc', 'Bearer tok-abc'])
  })

  it('leaves empty filters out of the query string', async () => {
    storeSession()
    freshApp()
    const calls = stubFetch(() => ({ body: { items: [], next_cursor: null } }))
    await listConversations({ q: '', platform: null, limit: 50, cursor: 120 })
    expect(calls[0].url).toBe('/api/conversations?limit=50&cursor=120')
  })

  it('ends the session on a 401 and sends the visitor to sign-in with next', async () => {
    storeSession('tok-old')
    const { router } = freshApp()
    await router.push('/users?q=ann')
    stubFetch(() => ({ status: 401, body: { error: 'unauthorized', detail: 'token expired' } }))

    const failure = await listUsers({ q: 'ann' }).catch((e: unknown) => e)
    await flushPromises()

    expect(failure).toBeInstanceOf(ApiError)
    expect((failure as ApiError).status).toBe(401)
    expect(useSessionStore().signedIn).toBe(false)
    expect(sessionStorage.getItem(STORAGE_KEY)).toBeNull()
    expect(router.currentRoute.value.name).toBe('login')
    expect(router.currentRoute.value.query.next).toBe('/users?q=ann')
  })

  it("does not end anything on the sign-in call's own 401", async () => {
    storeSession('tok-current', 'ops')
    const { router } = freshApp()
    await router.push('/users')
    stubFetch(() => ({ status: 401, body: { error: 'invalid_credentials', detail: 'wrong' } }))

    const failure = await login('ops', 'bad').catch((e: unknown) => e)
    await flushPromises()

    expect((failure as ApiError).error).toBe('invalid_credentials')
    expect(useSessionStore().token).toBe('tok-current')
    expect(router.currentRoute.value.fullPath).toBe('/users')
  })

  it('turns error bodies into typed errors, with field and retryAfter', async () => {
    storeSession()
    freshApp()
    stubFetch((call) =>
      call.path === '/api/auth/login'
        ? {
            status: 429,
            body: { error: 'account_locked', detail: 'locked' },
            headers: { 'Retry-After': '900' },
          }
        : {
            status: 400,
            body: { error: 'invalid_request', detail: 'rate_limit: 10/fortnight', field: 'rate_limit' },
          },
    )

    const refused = (await updateUser(4, { rate_limit: '10/fortnight' }).catch((e) => e)) as ApiError
    expect(refused).toBeInstanceOf(ApiError)
    expect(refused.status).toBe(400)
    expect(refused.error).toBe('invalid_request')
    expect(refused.field).toBe('rate_limit')
    expect(refused.detail).toBe('rate_limit: 10/fortnight')
    expect(refused.retryAfter).toBeNull()

    const locked = (await login('ops', 'x').catch((e) => e)) as ApiError
    expect(locked.status).toBe(429)
    expect(locked.error).toBe('account_locked')
    expect(locked.retryAfter).toBe(900)
  })

  it('reports a server that cannot be reached, or answers with no JSON', async () => {
    storeSession()
    freshApp()
    vi.stubGlobal('fetch', vi.fn(async () => Promise.reject(new TypeError('Failed to fetch'))))
    const offline = (await me().catch((e) => e)) as ApiError
    expect(offline.status).toBe(0)
    expect(offline.error).toBe('network_error')

    vi.stubGlobal('fetch', vi.fn(async () => new Response('<h1>Bad gateway</h1>', { status: 502, statusText: 'Bad Gateway' })))
    const gateway = (await me().catch((e) => e)) as ApiError
    expect(gateway.status).toBe(502)
    expect(gateway.error).toBe('http_502')
    expect(gateway.detail).toBe('Bad Gateway')
  })

  it('still returns the health report that comes with a 503', async () => {
    storeSession()
    freshApp()
    const report = { status: 'unavailable', checks: { database: { status: 'unavailable' } } }
    stubFetch(() => ({ status: 503, body: report }))
    expect(await getHealth()).toEqual(report)
  })
})

describe('parseRetryAfter', () => {
  it('reads seconds and HTTP dates', () => {
    expect(parseRetryAfter('30')).toBe(30)
    const now = Date.parse('2025-01-01T00:00:00Z')
    expect(parseRetryAfter('Wed, 01 Jan 2025 00:02:00 GMT', now)).toBe(120)
    expect(parseRetryAfter(null)).toBeNull()
    expect(parseRetryAfter('soon')).toBeNull()
  })
})
