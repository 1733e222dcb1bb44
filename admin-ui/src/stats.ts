// Turning /api/stats into chart series: the API leaves out days without activity, the charts
// show every day of the range.
import type { Stats } from './types'

/** The `days` UTC dates ("YYYY-MM-DD") that end with today's, oldest first. */
export function dayRange(days: number, today: Date = new Date()): string[] {
  const end = Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate())
  const out: string[] = []
  for (let i = days - 1; i >= 0; i -= 1) {
    out.push(new Date(end - i * 86_400_000).toISOString().slice(0, 10))
  }
  return out
}

/** The range's days plus any day the server reported outside it (a clock apart), sorted. */
export function chartDays(stats: Stats, today: Date = new Date()): string[] {
  const days = new Set(dayRange(stats.days, today))
  for (const row of stats.messages_per_day ?? []) days.add(row.day)
  for (const row of stats.tokens_per_day ?? []) days.add(row.day)
  for (const row of stats.latency_per_day ?? []) days.add(row.day)
  return [...days].sort()
}

export interface Series {
  name: string
  values: (number | null)[]
}

const PLATFORM_ORDER = ['telegram', 'slack', 'webhook']

/** Messages per day, one series per platform; a day without messages counts 0. */
export function messageSeries(stats: Stats, days: string[]): Series[] {
  const rows = stats.messages_per_day ?? []
  const platforms = [...new Set(rows.map((row) => row.platform))].sort(
    (a, b) => rank(a) - rank(b) || a.localeCompare(b),
  )
  const index = new Map(days.map((day, i) => [day, i]))
  return platforms.map((platform) => {
    const values = days.map(() => 0)
    for (const row of rows) {
      const i = index.get(row.day)
      if (row.platform === platform && i !== undefined) values[i] += row.messages
    }
    return { name: platform, values }
  })
}

function rank(platform: string): number {
  const i = PLATFORM_ORDER.indexOf(platform)
  return i === -1 ? PLATFORM_ORDER.length : i
}

/** Prompt and completion tokens per day; a quiet day counts 0. */
export function tokenSeries(stats: Stats, days: string[]): Series[] {
  const index = new Map(days.map((day, i) => [day, i]))
  const prompt = days.map(() => 0)
  const completion = days.map(() => 0)
  for (const row of stats.tokens_per_day ?? []) {
    const i = index.get(row.day)
    if (i === undefined) continue
    prompt[i] += row.prompt_tokens
    completion[i] += row.completion_tokens
  }
  return [
    { name: 'prompt', values: prompt },
    { name: 'completion', values: completion },
  ]
}

/**
 * p50 and p95 latency per day. A day without answers has no latency: it is null (a gap in
 * the line), not 0 ms, which would read as "instant".
 */
export function latencySeries(stats: Stats, days: string[]): Series[] {
  const index = new Map(days.map((day, i) => [day, i]))
  const p50: (number | null)[] = days.map(() => null)
  const p95: (number | null)[] = days.map(() => null)
  for (const row of stats.latency_per_day ?? []) {
    const i = index.get(row.day)
    if (i === undefined) continue
    p50[i] = row.p50_ms
    p95[i] = row.p95_ms
  }
  return [
    { name: 'p50', values: p50 },
    { name: 'p95', values: p95 },
  ]
}

/** A round axis maximum (1, 2, 2.5 or 5 × 10^n steps) at or above `max`, and its step. */
export function niceScale(max: number, ticks = 4, integer = true): { max: number; step: number } {
  if (!Number.isFinite(max) || max <= 0) return { max: ticks, step: 1 }
  const rough = max / ticks
  const power = 10 ** Math.floor(Math.log10(rough))
  let step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= rough) ?? 10 * power
  if (integer) step = Math.max(1, Math.round(step))
  return { max: Math.ceil(max / step - 1e-9) * step, step }
}
