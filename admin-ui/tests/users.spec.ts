import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { flushPromises, type VueWrapper } from '@vue/test-utils'
import { stubFetch, type Call } from './helpers'
import { user } from './fixtures'
import { mountAt } from './mountAt'
import type { User } from '../src/types'

let wrapper: VueWrapper | null = null
beforeEach(() => sessionStorage.clear())
afterEach(() => {
  wrapper?.unmount()
  wrapper = null
  vi.useRealTimers()
})

function usersApi(initial: User[]): Call[] {
  const people = new Map(initial.map((u) => [u.id, { ...u }]))
  return stubFetch((call) => {
    const patch = call.path.match(/^\/api\/users\/(\d+)$/)
    if (patch && call.method === 'PATCH') {
      const body = call.body as { banned?: boolean; rate_limit?: string | null }
      if (typeof body.rate_limit === 'string' && !/^\d+\/(second|minute|hour|day)(;\d+\/(second|minute|hour|day))*$/.test(body.rate_limit)) {
        return {
          status: 400,
          body: { error: 'invalid_request', field: 'rate_limit', detail: `rate_limit: cannot read "${body.rate_limit}"` },
        }
      }
      const found = people.get(Number(patch[1]))!
      Object.assign(found, body)
      return { body: found }
    }
    return { body: { items: [...people.values()], next_cursor: null } }
  })
}

function row(w: VueWrapper, id: number) {
  return w.find(`[data-testid="user-row"][data-user-id="${id}"]`)
}

function button(w: ReturnType<typeof row>, name: string) {
  const found = w.findAll('button').find((b) => b.text() === name)
  if (!found) throw new Error(`no button ${name}`)
  return found
}

describe('the users page', () => {
  it('lists users with their platform id, messages and state', async () => {
    usersApi([user({ id: 1, name: 'Ann' }), user({ id: 2, name: null, platform: 'telegram', platform_user_id: '42', banned: true })])
    ;({ wrapper } = await mountAt('/users'))
    expect(wrapper.find('h1').text()).toBe('Users')
    expect(wrapper.findAll('[data-testid="user-row"]')).toHaveLength(2)
    expect(row(wrapper, 1).text()).toContain('Ann')
    expect(row(wrapper, 1).text()).toContain('U0123')
    expect(row(wrapper, 1).text()).toContain('Active')
    expect(row(wrapper, 2).text()).toContain('Banned')
    expect(row(wrapper, 2).text()).toContain('Unban')
  })

  it('bans and unbans a user with one button', async () => {
    const calls = usersApi([user({ id: 3 })])
    ;({ wrapper } = await mountAt('/users'))

    await button(row(wrapper, 3), 'Ban').trigger('click')
    await flushPromises()
    const patch = calls.find((c) => c.method === 'PATCH')!
    expect(patch.path).toBe('/api/users/3')
    expect(patch.body).toEqual({ banned: true })
    expect(row(wrapper, 3).attributes('data-banned')).toBe('true')
    expect(row(wrapper, 3).text()).toContain('Banned')

    await button(row(wrapper, 3), 'Unban').trigger('click')
    await flushPromises()
    expect(calls.filter((c) => c.method === 'PATCH').map((c) => c.body)).toEqual([
      { banned: true },
      { banned: false },
    ])
    expect(row(wrapper, 3).attributes('data-banned')).toBe('false')
  })

  it('saves a rate limit, and an empty field goes back to the default', async () => {
    const calls = usersApi([user({ id: 4, rate_limit: '5/minute' })])
    ;({ wrapper } = await mountAt('/users'))
    const input = row(wrapper, 4).find('input')
    expect(input.attributes('placeholder')).toBe('default')
    expect((input.element as HTMLInputElement).value).toBe('5/minute')
    expect(wrapper.find(`label[for="${input.attributes('id')}"]`).text()).toBe('Rate limit')

    await input.setValue(' 10/minute;100/day ')
    await button(row(wrapper, 4), 'Save').trigger('click')
    await flushPromises()
    expect(calls.filter((c) => c.method === 'PATCH')).toHaveLength(1)
    expect(calls.filter((c) => c.method === 'PATCH').at(-1)!.body).toEqual({ rate_limit: '10/minute;100/day' })
    expect(row(wrapper, 4).text()).toContain('Saved')

    await input.setValue('')
    await row(wrapper, 4).find('form').trigger('submit')
    await flushPromises()
    expect(calls.filter((c) => c.method === 'PATCH').at(-1)!.body).toEqual({ rate_limit: null })
  })

  it('shows why a rate limit was refused, next to the field', async () => {
    usersApi([user({ id: 5 })])
    ;({ wrapper } = await mountAt('/users'))
    const input = row(wrapper, 5).find('input')
    await input.setValue('10/fortnight')
    await row(wrapper, 5).find('form').trigger('submit')
    await flushPromises()

    const error = row(wrapper, 5).find('.field-error')
    expect(error.text()).toBe('rate_limit: cannot read "10/fortnight"')
    expect(error.attributes('role')).toBe('alert')
    expect(input.attributes('aria-invalid')).toBe('true')
    expect(input.attributes('aria-describedby')).toBe(error.attributes('id'))
  })

  it('searches after a pause in typing, and keeps the filters in the URL', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] })
    const calls = usersApi([user({ id: 1 })])
    let router
    ;({ wrapper, router } = await mountAt('/users?platform=slack'))
    expect(calls[0].query.get('platform')).toBe('slack')
    expect((wrapper.find('select').element as HTMLSelectElement).value).toBe('slack')

    await wrapper.find('input[type="search"]').setValue('an')
    vi.advanceTimersByTime(200)
    await flushPromises()
    await wrapper.find('input[type="search"]').setValue('ann')
    vi.advanceTimersByTime(299)
    await flushPromises()
    // Still typing: neither the URL nor the list has changed yet.
    expect(router.currentRoute.value.query).toEqual({ platform: 'slack' })
    expect(calls.filter((c) => c.path === '/api/users')).toHaveLength(1)

    vi.advanceTimersByTime(1)
    await flushPromises()

    expect(router.currentRoute.value.query).toEqual({ platform: 'slack', q: 'ann' })
    const searches = calls.filter((c) => c.path === '/api/users')
    expect(searches).toHaveLength(2)
    expect(searches[1].query.get('q')).toBe('ann')
    expect(searches[1].query.get('platform')).toBe('slack')
  })
})
