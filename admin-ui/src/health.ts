// Colours for health states: green for ok, amber for degraded, red for unavailable, grey for
// disabled. Any other state (a newer server) is shown as its own text in a neutral colour.
export type Tone = 'ok' | 'warn' | 'bad' | 'off' | 'unknown'

const TONES: Record<string, Tone> = {
  ok: 'ok',
  degraded: 'warn',
  circuit_open: 'warn',
  unavailable: 'bad',
  failed: 'bad',
  error: 'bad',
  disabled: 'off',
  offline_echo: 'off',
  echo: 'off',
}

export function toneOf(status: string | null | undefined): Tone {
  return (status && TONES[status]) || 'unknown'
}

const CHECK_LABELS: Record<string, string> = {
  database: 'Database',
  redis: 'Redis',
  llm: 'Model',
}

export function checkLabel(name: string): string {
  return CHECK_LABELS[name] ?? name.charAt(0).toUpperCase() + name.slice(1)
}

/** The known names first, in their order, then any others alphabetically. */
export function ordered(names: string[], known: string[]): string[] {
  const rank = (name: string) => {
    const i = known.indexOf(name)
    return i === -1 ? known.length : i
  }
  return [...names].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))
}
