import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { flushPromises, type VueWrapper } from '@vue/test-utils'
import { stubFetch } from './helpers'
import { message } from './fixtures'
import { mountAt } from './mountAt'

let wrapper: VueWrapper | null = null
beforeEach(() => sessionStorage.clear())
afterEach(() => {
  wrapper?.unmount()
  wrapper = null
})

const transcript = [
  message({ id: 1, role: 'user', text: '/start', command: 'start' }),
  message({
    id: 2,
    role: 'assistant',
    text: 'Hi! Ask me anything.',
    user_id: null,
    model: 'gpt-4o-mini',
    prompt_tokens: 120,
    completion_tokens: 35,
    latency_ms: 850,
  }),
  message({ id: 3, role: 'user', text: 'What is 2+2?', status: 'failed' }),
  message({ id: 4, role: 'user', text: 'again', status: 'rate_limited' }),
  message({ id: 5, role: 'user', text: 'hello?', status: 'banned' }),
]

describe('the transcript', () => {
  it('shows the turns as bubbles, user left and assistant right, with cost and latency', async () => {
    stubFetch(() => ({ body: { items: transcript, next_cursor: null } }))
    ;({ wrapper } = await mountAt('/conversations/12'))

    expect(wrapper.find('h1').text()).toBe('Conversation #12')
    const bubbles = wrapper.findAll('[data-testid="message"]')
    expect(bubbles.map((b) => b.attributes('data-role'))).toEqual([
      'user',
      'assistant',
      'user',
      'user',
      'user',
    ])
    expect(bubbles[0].classes()).toContain('side-left')
    expect(bubbles[0].text()).toContain('/start')
    const answer = bubbles[1]
    expect(answer.classes()).toContain('side-right')
    expect(answer.text()).toContain('gpt-4o-mini')
    expect(answer.text()).toContain('120 + 35 tokens')
    expect(answer.text()).toContain('850 ms')
    expect(answer.find('[data-testid="message-status"]').exists()).toBe(false)
  })

  it('marks failed turns, and labels rate-limited and banned ones', async () => {
    stubFetch(() => ({ body: { items: transcript, next_cursor: null } }))
    ;({ wrapper } = await mountAt('/conversations/12'))

    const failed = wrapper.find('[data-testid="message"][data-status="failed"]')
    expect(failed.classes()).toContain('status-failed')
    expect(failed.find('[data-testid="message-status"]').text()).toBe('failed')
    expect(wrapper.find('[data-status="rate_limited"] [data-testid="message-status"]').text()).toBe(
      'rate limited',
    )
    expect(wrapper.find('[data-status="banned"] [data-testid="message-status"]').text()).toBe('banned')
    expect(wrapper.text()).toContain('1 failed')
  })

  it('loads more after the cursor while there is more', async () => {
    const calls = stubFetch((call) =>
      call.query.get('cursor') === '5'
        ? { body: { items: [message({ id: 6, text: 'the sixth' })], next_cursor: null } }
        : { body: { items: transcript, next_cursor: 5 } },
    )
    ;({ wrapper } = await mountAt('/conversations/12'))
    expect(calls[0].path).toBe('/api/conversations/12/messages')

    const more = wrapper.findAll('button').find((b) => b.text() === 'Load more')
    expect(more).toBeDefined()
    await more!.trigger('click')
    await flushPromises()

    expect(calls[1].query.get('cursor')).toBe('5')
    expect(wrapper.findAll('[data-testid="message"]')).toHaveLength(6)
    expect(wrapper.text()).toContain('the sixth')
    expect(wrapper.findAll('button').some((b) => b.text() === 'Load more')).toBe(false)
  })

  it('says so when the conversation does not exist', async () => {
    stubFetch(() => ({ status: 404, body: { error: 'not_found', detail: 'no such conversation' } }))
    ;({ wrapper } = await mountAt('/conversations/99'))
    expect(wrapper.find('[role="alert"]').text()).toBe('There is no conversation #99.')
    expect(wrapper.find('a[href="/admin/conversations"]').exists()).toBe(true)
  })
})
