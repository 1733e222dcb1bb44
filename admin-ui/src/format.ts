// Display helpers: dates, relative times, numbers, durations.

const LOCALE = 'en-GB'

const dateTime = new Intl.DateTimeFormat(LOCALE, { dateStyle: 'medium', timeStyle: 'short' })
const timeOnly = new Intl.DateTimeFormat(LOCALE, { hour: '2-digit', minute: '2-digit' })
const dayMonth = new Intl.DateTimeFormat(LOCALE, { day: 'numeric', month: 'short', timeZone: 'UTC' })
const relative = new Intl.RelativeTimeFormat('en', { numeric: 'auto' })
const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 })

function parse(iso: string | null | undefined): Date | null {
  if (!iso) return null
  const date = new Date(iso)
  return Number.isNaN(date.getTime()) ? null : date
}

/** "28 Nov 2025, 21:53" in the viewer's time zone; "—" for none. */
export function formatDateTime(iso: string | null | undefined): string {
  const date = parse(iso)
  return date ? dateTime.format(date) : '—'
}

/** "21:53" in the viewer's time zone. */
export function formatTime(iso: string | null | undefined): string {
  const date = parse(iso)
  return date ? timeOnly.format(date) : '—'
}

/** "just now", "5 minutes ago", "yesterday", "3 months ago"; "never" for none. */
export function relativeTime(iso: string | null | undefined, now: number = Date.now()): string {
  const date = parse(iso)
  if (!date) return 'never'
  const seconds = Math.round((date.getTime() - now) / 1000)
  const abs = Math.abs(seconds)
  if (abs < 45) return 'just now'
  const steps: [number, Intl.RelativeTimeFormatUnit][] = [
    [60, 'second'],
    [60, 'minute'],
    [24, 'hour'],
    [7, 'day'],
    [4.35, 'week'],
    [12, 'month'],
    [Number.POSITIVE_INFINITY, 'year'],
  ]
  let value = seconds
  for (const [size, unit] of steps) {
    if (Math.abs(value) < size) return relative.format(Math.round(value), unit)
    value /= size
  }
  return relative.format(Math.round(value), 'year')
}

/** "12,345". */
export function formatNumber(value: number | null | undefined): string {
  return typeof value === 'number' && Number.isFinite(value) ? integer.format(value) : '—'
}

/** "850 ms", "1.2 s", "—". */
export function formatMs(value: number | null | undefined): string {
  if (typeof value !== 'number' || !Number.isFinite(value)) return '—'
  if (value < 1000) return `${Math.round(value)} ms`
  return `${(value / 1000).toFixed(value < 10_000 ? 1 : 0)} s`
}

/** "28 Nov" for a UTC day "2025-11-28". */
export function formatDay(day: string): string {
  const date = new Date(`${day}T00:00:00Z`)
  return Number.isNaN(date.getTime()) ? day : dayMonth.format(date)
}

/** At most `length` characters, with an ellipsis when cut. */
export function truncate(text: string | null | undefined, length: number): string {
  if (!text) return ''
  const flat = text.replace(/\s+/g, ' ').trim()
  return flat.length <= length ? flat : `${flat.slice(0, length - 1).trimEnd()}…`
}

const PLATFORM_NAMES: Record<string, string> = {
  telegram: 'Telegram',
  slack: 'Slack',
  webhook: 'Webhook',
}

export function platformName(platform: string): string {
  return PLATFORM_NAMES[platform] ?? platform
}
