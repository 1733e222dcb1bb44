// Geometry shared by the hand-written SVG charts.
import { niceScale } from './stats'

export interface ChartSeries {
  name: string
  label: string
  color: string
  values: (number | null)[]
  dashed?: boolean
}

export interface Frame {
  width: number
  height: number
  left: number
  right: number
  top: number
  bottom: number
  max: number
  ticks: { value: number; y: number; label: string }[]
  /** The x labels to draw (so they do not overlap), kept inside the chart at the edges. */
  labelled: { index: number; x: number; anchor: 'start' | 'middle' | 'end' }[]
  band: number
  x: (index: number) => number
  y: (value: number) => number
}

export function frame(
  width: number,
  height: number,
  count: number,
  dataMax: number,
  formatTick: (value: number) => string,
  integer = true,
): Frame {
  const scale = niceScale(dataMax, 4, integer)
  const tickValues: number[] = []
  for (let v = 0; v <= scale.max + 1e-9; v += scale.step) tickValues.push(v)
  const tickLabels = tickValues.map(formatTick)
  const longest = Math.max(...tickLabels.map((label) => label.length))
  const left = Math.max(28, Math.ceil(longest * 7 + 10))
  const right = 8
  const top = 10
  const bottom = 24
  const plotWidth = Math.max(10, width - left - right)
  const plotHeight = Math.max(10, height - top - bottom)
  const band = plotWidth / Math.max(1, count)
  const y = (value: number) => top + plotHeight - (value / scale.max) * plotHeight
  const x = (index: number) => left + band * index + band / 2
  const every = Math.max(1, Math.ceil(count / Math.max(1, Math.floor(plotWidth / 52))))
  const labelled: Frame['labelled'] = []
  const half = 22 // about half the width of "28 Nov" at 11px
  for (let i = count - 1; i >= 0; i -= every) {
    // always the last day; the edge labels are anchored so that they are not cut off
    const at = x(i)
    if (at + half > width) labelled.unshift({ index: i, x: width - 1, anchor: 'end' })
    else if (at - half < 0) labelled.unshift({ index: i, x: 1, anchor: 'start' })
    else labelled.unshift({ index: i, x: at, anchor: 'middle' })
  }
  return {
    width,
    height,
    left,
    right,
    top,
    bottom,
    max: scale.max,
    ticks: tickValues.map((value, i) => ({ value, y: y(value), label: tickLabels[i] })),
    labelled,
    band,
    x,
    y,
  }
}

export const PLATFORM_COLORS: Record<string, string> = {
  telegram: '#2563eb',
  slack: '#9333ea',
  webhook: '#0f766e',
}
const SPARE_COLORS = ['#c2410c', '#4b5563', '#be185d', '#4d7c0f']

export function platformColor(platform: string, index: number): string {
  return PLATFORM_COLORS[platform] ?? SPARE_COLORS[index % SPARE_COLORS.length]
}
