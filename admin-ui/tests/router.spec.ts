import { beforeEach, describe, expect, it } from 'vitest'
import { flushPromises, mount } from '@vue/test-utils'
import App from '../src/App.vue'
import { safeNext } from '../src/router'
import { useSessionStore } from '../src/stores/session'
import { freshApp, storeSession, stubFetch } from './helpers'

beforeEach(() => {
  sessionStorage.clear()
})

describe('the router guard', () => {
  it('sends a signed-out visitor to sign-in, remembering where they wanted to go', async () => {
    const { router } = freshApp()
    await router.push('/users?q=ann')
    const route = router.currentRoute.value
    expect(route.name).toBe('login')
    expect(route.query.next).toBe('/users?q=ann')
    expect(router.resolve(route).href).toBe('/admin/login?next=/users?q=ann')
  })

  it('lets a signed-in admin through to the page', async () => {
    storeSession()
    const { router } = freshApp()
    await router.push('/conversations/12')
    expect(router.currentRoute.value.name).toBe('conversation')
    expect(router.currentRoute.value.params.id).toBe('12')
  })

  it('sends a signed-in admin away from the sign-in page', async () => {
    storeSession()
    const { router } = freshApp()
    await router.push('/login?next=/users')
    expect(router.currentRoute.value.fullPath).toBe('/users')
  })

  it('treats a stored token past its lifetime as signed out', async () => {
    storeSession('old', 'ops', Date.now() - 1000)
    const { router } = freshApp()
    await router.push('/users')
    expect(router.currentRoute.value.name).toBe('login')
    expect(useSessionStore().token).toBeNull()
    expect(useSessionStore().endedBecause).toBe('expired')
  })

  it('shows the not-found page for an unknown path, signed in or not', async () => {
    const { router } = freshApp()
    await router.push('/nothing/here')
    expect(router.currentRoute.value.name).toBe('not-found')
  })
})

async function signInThrough(start: string): Promise<string> {
  const calls = stubFetch((call) => {
    if (call.path === '/api/auth/login') {
      return { body: { access_token: 'tok-9', token_type: 'bearer', expires_in: 3600 } }
    }
    return { body: { items: [], next_cursor: null } }
  })
  const { pinia, router } = freshApp()
  await router.push(start)
  const wrapper = mount(App, { global: { plugins: [pinia, router] } })
  await flushPromises()
  expect(wrapper.find('h1').text()).toBe('Sign in')
  await wrapper.find('input[autocomplete="username"]').setValue('ops')
  await wrapper.find('input[type="password"]').setValue('secret')
  await wrapper.find('form').trigger('submit')
  await flushPromises()
  expect(calls[0].path).toBe('/api/auth/login')
  expect(calls[0].body).toEqual({ username: 'ops', password: 'secret' })
  const landed = router.currentRoute.value.fullPath // before unmounting: that resets the router
  wrapper.unmount()
  return landed
}

describe('signing in', () => {
  it('returns the admin to the page they asked for', async () => {
    expect(await signInThrough('/login?next=%2Fconversations%2F12')).toBe('/conversations/12')
  })

  it('returns there when the page was first refused by the guard', async () => {
    expect(await signInThrough('/users?platform=slack')).toBe('/users?platform=slack')
  })

  it('accepts next with the /admin/ prefix of the address bar', async () => {
    expect(await signInThrough('/login?next=%2Fadmin%2Fusers')).toBe('/users')
  })

  it.each([
    '//evil.example',
    '//evil.example/admin/users',
    'https://evil.example/',
    '/\\evil.example',
    'javascript:alert(1)',
    'evil.example',
  ])('ignores the hostile next %s and lands on the overview', async (next) => {
    const landed = await signInThrough(`/login?next=${encodeURIComponent(next)}`)
    expect(landed).toBe('/')
  })
})

describe('safeNext', () => {
  it('keeps paths of this app with their query and hash', () => {
    expect(safeNext('/users?q=a#x')).toBe('/users?q=a#x')
    expect(safeNext('/admin/conversations/3')).toBe('/conversations/3')
    expect(safeNext('/admin')).toBe('/')
  })

  it('refuses anything that could leave the app, and the sign-in page itself', () => {
    for (const next of ['//evil.example', 'https://evil.example', '/\\evil', '/%0a/x\n', '', '/login']) {
      expect(safeNext(next)).toBeNull()
    }
    expect(safeNext(undefined)).toBeNull()
    expect(safeNext(['/users', '//evil'])).toBe('/users')
  })
})
