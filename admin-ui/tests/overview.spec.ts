import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { flushPromises, type VueWrapper } from '@vue/test-utils'
import { stubFetch, type Reply } from './helpers'
import { mountAt } from './mountAt'
import type { Health, Stats } from '../src/types'

let wrapper: VueWrapper | null = null
beforeEach(() => sessionStorage.clear())
afterEach(() => {
  wrapper?.unmount()
  wrapper = null
})

const health: Health = {
  status: 'degraded',
  checks: {
    database: { status: 'ok', duration_ms: 1.4 },
    redis: { status: 'disabled', duration_ms: 0 },
    llm: { status: 'circuit_open', duration_ms: 0.1 },
  },
  adapters: {
    telegram: { status: 'ok', last_message_at: null, failed_last_hour: 0 },
    slack: { status: 'disabled', last_message_at: null, failed_last_hour: 0 },
    webhook: { status: 'warming_up', last_message_at: null, failed_last_hour: 3 },
  },
  queue: { depth: 7 },
}

function stats(days: number): Stats {
  return {
    days,
    messages_per_day: [],
    tokens_per_day: [],
    latency_per_day: [],
    latency_p50_ms: 640,
    latency_p95_ms: 2100,
    answered: 1234,
    failed: 5,
    rate_limited: 9,
  }
}

function api(healthReply: Reply = { body: health }) {
  return stubFetch((call) => {
    if (call.path === '/api/health') return healthReply
    return { body: stats(Number(call.query.get('days') ?? 14)) }
  })
}

describe('the overview', () => {
  it('shows a coloured card per check and channel, with its status as text', async () => {
    api()
    ;({ wrapper } = await mountAt('/'))
    expect(wrapper.find('h1').text()).toBe('Overview')
    const card = (name: string) => wrapper!.find(`[data-testid="health-${name}"]`)
    expect(card('database').classes()).toContain('tone-ok')
    expect(card('database').text()).toContain('ok')
    expect(card('redis').classes()).toContain('tone-off')
    expect(card('redis').text()).toContain('disabled')
    expect(card('llm').text()).toContain('Model')
    expect(card('llm').text()).toContain('circuit open')
    expect(card('llm').classes()).toContain('tone-warn')
    expect(card('telegram').classes()).toContain('tone-ok')
    expect(card('slack').classes()).toContain('tone-off')
    // A state this dashboard does not know is still shown, as text, in a neutral colour.
    expect(card('webhook').text()).toContain('warming up')
    expect(card('webhook').classes()).toContain('tone-unknown')
    expect(card('webhook').text()).toContain('3')
    expect(card('queue').text()).toContain('7 jobs waiting')
    expect(wrapper.find('[data-testid="health-overall"]').text()).toContain('degraded')
  })

  it('still shows the cards when the service answers 503 unavailable', async () => {
    api({
      status: 503,
      body: { status: 'unavailable', checks: { database: { status: 'unavailable', error: 'connection refused' } } },
    })
    ;({ wrapper } = await mountAt('/'))
    const database = wrapper.find('[data-testid="health-database"]')
    expect(database.classes()).toContain('tone-bad')
    expect(database.text()).toContain('connection refused')
  })

  it('shows the totals and switches the range', async () => {
    const calls = api()
    let router
    ;({ wrapper, router } = await mountAt('/'))
    expect(calls.find((c) => c.path === '/api/stats')!.query.get('days')).toBe('14')
    expect(wrapper.find('[data-testid="total-answered"]').text()).toBe('1,234')
    expect(wrapper.find('[data-testid="total-failed"]').text()).toBe('5')
    expect(wrapper.find('[data-testid="total-rate-limited"]').text()).toBe('9')

    const thirty = wrapper.findAll('button').find((b) => b.text() === '30 days')!
    await thirty.trigger('click')
    await flushPromises()
    expect(router.currentRoute.value.query.days).toBe('30')
    expect(calls.filter((c) => c.path === '/api/stats').at(-1)!.query.get('days')).toBe('30')
    expect(thirty.attributes('aria-pressed')).toBe('true')
  })
})
