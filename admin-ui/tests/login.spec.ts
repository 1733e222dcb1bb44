import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { flushPromises, mount, type VueWrapper } from '@vue/test-utils'
import App from '../src/App.vue'
import { freshApp, stubFetch, type Reply } from './helpers'

let wrapper: VueWrapper | null = null
beforeEach(() => sessionStorage.clear())
afterEach(() => {
  wrapper?.unmount()
  wrapper = null
})

async function tryToSignIn(reply: Reply): Promise<VueWrapper> {
  stubFetch(() => reply)
  const { pinia, router } = freshApp()
  await router.push('/login')
  wrapper = mount(App, { global: { plugins: [pinia, router] } })
  await flushPromises()
  await wrapper.find('#login-username').setValue('ops')
  await wrapper.find('#login-password').setValue('wrong')
  await wrapper.find('form').trigger('submit')
  await flushPromises()
  return wrapper
}

describe('the sign-in page', () => {
  it('has labelled fields and says when the credentials are wrong', async () => {
    const w = await tryToSignIn({ status: 401, body: { error: 'invalid_credentials', detail: 'x' } })
    expect(w.find('label[for="login-username"]').text()).toBe('Username')
    expect(w.find('label[for="login-password"]').text()).toBe('Password')
    const alert = w.find('[role="alert"]')
    expect(alert.text()).toBe('Wrong username or password.')
    expect((w.find('#login-password').element as HTMLInputElement).value).toBe('')
    expect(w.find('h1').text()).toBe('Sign in')
  })

  it('says when a locked account can try again', async () => {
    const w = await tryToSignIn({
      status: 429,
      body: { error: 'account_locked', detail: 'locked' },
      headers: { 'Retry-After': '600' },
    })
    expect(w.find('[role="alert"]').text()).toMatch(/locked.*Try again in 10 minutes \(at \d\d:\d\d\)/)
  })

  it('says when there were too many attempts', async () => {
    const w = await tryToSignIn({
      status: 429,
      body: { error: 'too_many_attempts', detail: 'slow down' },
      headers: { 'Retry-After': '30' },
    })
    expect(w.find('[role="alert"]').text()).toMatch(/Too many sign-in attempts\. Try again in 30 seconds/)
  })
})

describe('the top bar', () => {
  it('names the admin and signs out to the sign-in page', async () => {
    const calls = stubFetch((call) =>
      call.path === '/api/auth/login'
        ? { body: { access_token: 'tok-5', token_type: 'bearer', expires_in: 3600 } }
        : { body: { items: [], next_cursor: null } },
    )
    const { pinia, router } = freshApp()
    await router.push('/login?next=/users')
    wrapper = mount(App, { global: { plugins: [pinia, router] } })
    await flushPromises()
    await wrapper.find('#login-username').setValue('ops')
    await wrapper.find('#login-password').setValue('right')
    await wrapper.find('form').trigger('submit')
    await flushPromises()

    const nav = wrapper.find('nav')
    expect(nav.findAll('a').map((a) => a.text())).toEqual(['Overview', 'Conversations', 'Users'])
    expect(nav.find('[aria-current="page"]').text()).toBe('Users')
    expect(wrapper.find('[data-testid="username"]').text()).toBe('ops')

    await wrapper.findAll('button').find((b) => b.text() === 'Sign out')!.trigger('click')
    await flushPromises()
    const logout = calls.find((c) => c.path === '/api/auth/logout')!
    expect(logout.headers.authorization).toBe('Bearer tok-5')
    expect(router.currentRoute.value.name).toBe('login')
    expect(wrapper.find('h1').text()).toBe('Sign in')
    expect(wrapper.find('nav').exists()).toBe(false)
  })
})
