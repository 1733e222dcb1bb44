import { describe, expect, it } from 'vitest'
import { chartDays, dayRange, latencySeries, messageSeries, niceScale, tokenSeries } from '../src/stats'
import { relativeTime, truncate, formatMs } from '../src/format'
import type { Stats } from '../src/types'

const today = new Date('2025-03-02T15:00:00Z')

const stats: Stats = {
  days: 4,
  messages_per_day: [
    { day: '2025-02-27', platform: 'slack', messages: 2 },
    { day: '2025-03-02', platform: 'telegram', messages: 5 },
    { day: '2025-03-02', platform: 'slack', messages: 1 },
  ],
  tokens_per_day: [{ day: '2025-03-01', prompt_tokens: 100, completion_tokens: 40 }],
  latency_per_day: [{ day: '2025-03-02', p50_ms: 500, p95_ms: 1500 }],
  latency_p50_ms: 500,
  latency_p95_ms: 1500,
  answered: 8,
  failed: 0,
  rate_limited: 0,
}

describe('chart series', () => {
  it('covers every day of the range, across a month end, ending today (UTC)', () => {
    expect(dayRange(4, today)).toEqual(['2025-02-27', '2025-02-28', '2025-03-01', '2025-03-02'])
    expect(chartDays(stats, today)).toEqual(dayRange(4, today))
  })

  it('fills days without messages with zero, one series per platform', () => {
    const days = chartDays(stats, today)
    expect(messageSeries(stats, days)).toEqual([
      { name: 'telegram', values: [0, 0, 0, 5] },
      { name: 'slack', values: [2, 0, 0, 1] },
    ])
    expect(tokenSeries(stats, days)).toEqual([
      { name: 'prompt', values: [0, 0, 100, 0] },
      { name: 'completion', values: [0, 0, 40, 0] },
    ])
  })

  it('leaves a gap, not a zero, on days without latency', () => {
    expect(latencySeries(stats, chartDays(stats, today))[1].values).toEqual([null, null, null, 1500])
  })

  it('rounds the axis up to a readable maximum', () => {
    expect(niceScale(0)).toEqual({ max: 4, step: 1 })
    expect(niceScale(7)).toEqual({ max: 8, step: 2 })
    expect(niceScale(1234)).toEqual({ max: 1500, step: 500 })
  })
})

describe('formatting', () => {
  const now = Date.parse('2025-03-02T15:00:00Z')
  it('writes relative times', () => {
    expect(relativeTime('2025-03-02T14:59:50Z', now)).toBe('just now')
    expect(relativeTime('2025-03-02T14:55:00Z', now)).toBe('5 minutes ago')
    expect(relativeTime('2025-03-01T14:00:00Z', now)).toBe('yesterday')
    expect(relativeTime(null, now)).toBe('never')
  })

  it('cuts long text and writes durations', () => {
    expect(truncate('a\nb   c', 10)).toBe('a b c')
    expect(truncate('abcdefghijk', 5)).toBe('abcd…')
    expect(formatMs(850.4)).toBe('850 ms')
    expect(formatMs(1530)).toBe('1.5 s')
    expect(formatMs(null)).toBe('—')
  })
})
