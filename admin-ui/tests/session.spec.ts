import { beforeEach, describe, expect, it } from 'vitest'
import { createPinia, setActivePinia } from 'pinia'
import { ApiError } from '../src/api'
import { STORAGE_KEY, useSessionStore } from '../src/stores/session'
import { storeSession, stubFetch } from './helpers'

beforeEach(() => {
  sessionStorage.clear()
  setActivePinia(createPinia())
})

const grant = { access_token: 'tok-1', token_type: 'bearer', expires_in: 3600 }

describe('the session store', () => {
  it('signs in: keeps the token and username, in sessionStorage too', async () => {
    const calls = stubFetch(() => ({ body: grant }))
    const session = useSessionStore()
    expect(session.signedIn).toBe(false)

    await session.signIn('ops', 'secret')

    expect(calls).toHaveLength(1)
    expect(calls[0].method).toBe('POST')
    expect(calls[0].path).toBe('/api/auth/login')
    expect(calls[0].body).toEqual({ username: 'ops', password: 'secret' })
    expect(calls[0].headers.authorization).toBeUndefined()
    expect(session.signedIn).toBe(true)
    expect(session.token).toBe('tok-1')
    expect(session.username).toBe('ops')
    const stored = JSON.parse(sessionStorage.getItem(STORAGE_KEY) ?? '{}')
    expect(stored.token).toBe('tok-1')
    expect(stored.username).toBe('ops')
    expect(stored.expiresAt).toBeGreaterThan(Date.now() + 3500_000)
  })

  it('stays signed out when the password is wrong, and says why', async () => {
    stubFetch(() => ({ status: 401, body: { error: 'invalid_credentials', detail: 'wrong' } }))
    const session = useSessionStore()
    const failure = await session.signIn('ops', 'nope').catch((e: unknown) => e)
    expect(failure).toBeInstanceOf(ApiError)
    expect((failure as ApiError).error).toBe('invalid_credentials')
    expect(session.signedIn).toBe(false)
    expect(sessionStorage.getItem(STORAGE_KEY)).toBeNull()
  })

  it('signs out: calls the logout route with the token, then forgets it', async () => {
    storeSession('tok-7')
    const calls = stubFetch(() => ({ body: { status: 'signed_out' } }))
    const session = useSessionStore()
    expect(session.signedIn).toBe(true)

    await session.signOut()

    expect(calls).toHaveLength(1)
    expect(calls[0].method).toBe('POST')
    expect(calls[0].path).toBe('/api/auth/logout')
    expect(calls[0].headers.authorization).toBe('Bearer tok-7')
    expect(session.signedIn).toBe(false)
    expect(session.username).toBeNull()
    expect(sessionStorage.getItem(STORAGE_KEY)).toBeNull()
  })

  it('forgets the token even when the server cannot be told', async () => {
    storeSession('tok-7')
    stubFetch(() => ({ status: 503, body: { error: 'unavailable', detail: 'down' } }))
    const session = useSessionStore()
    await session.signOut()
    expect(session.signedIn).toBe(false)
    expect(sessionStorage.getItem(STORAGE_KEY)).toBeNull()
  })

  it('restores the session from sessionStorage after a reload', () => {
    storeSession('tok-3', 'admin-ann', Date.now() + 60_000)
    const session = useSessionStore()
    expect(session.signedIn).toBe(true)
    expect(session.token).toBe('tok-3')
    expect(session.username).toBe('admin-ann')
    expect(session.checkExpiry()).toBe(true)
  })

  it('drops a restored token once its lifetime has passed', () => {
    storeSession('tok-3', 'ops', Date.now() + 60_000)
    const session = useSessionStore()
    expect(session.checkExpiry(Date.now() + 61_000)).toBe(false)
    expect(session.token).toBeNull()
    expect(sessionStorage.getItem(STORAGE_KEY)).toBeNull()
  })

  it('ignores unreadable stored data', () => {
    sessionStorage.setItem(STORAGE_KEY, '{not json')
    expect(useSessionStore().signedIn).toBe(false)
  })
})
