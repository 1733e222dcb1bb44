import { onBeforeUnmount, ref, watch } from 'vue'
import { useRoute, useRouter, type LocationQuery } from 'vue-router'
import { PLATFORMS } from '../types'

export const SEARCH_DELAY_MS = 300

function text(value: LocationQuery[string] | undefined): string {
  const first = Array.isArray(value) ? value[0] : value
  return typeof first === 'string' ? first : ''
}

function platformOf(value: LocationQuery[string] | undefined): string {
  const name = text(value)
  return (PLATFORMS as readonly string[]).includes(name) ? name : ''
}

/**
 * The search box and platform filter of a listing, kept in the URL query (`q`, `platform`) so
 * that a reload or a shared link keeps them. Typing updates the URL after a short pause.
 */
export function useListFilters() {
  const route = useRoute()
  const router = useRouter()
  const search = ref(text(route.query.q))
  const platform = ref(platformOf(route.query.platform))
  const page = route.name
  let timer: ReturnType<typeof setTimeout> | null = null

  function cancel(): void {
    if (timer !== null) clearTimeout(timer)
    timer = null
  }

  /** Write the inputs to the URL now. */
  function apply(): void {
    cancel()
    if (route.name !== page) return // leaving the page: the next one owns the URL
    const q = search.value.trim()
    const query: LocationQuery = { ...route.query }
    delete query.q
    delete query.platform
    if (q) query.q = q
    if (platform.value) query.platform = platform.value
    if (text(route.query.q) === (q || '') && platformOf(route.query.platform) === platform.value) {
      return
    }
    void router.replace({ query })
  }

  watch(search, () => {
    cancel()
    timer = setTimeout(apply, SEARCH_DELAY_MS)
  })
  watch(platform, apply)

  // Back/forward, or a link: the URL changed, so the inputs follow.
  watch(
    () => [route.query.q, route.query.platform],
    () => {
      if (route.name !== page) return
      const q = text(route.query.q)
      if (timer === null && search.value.trim() !== q) search.value = q
      const p = platformOf(route.query.platform)
      if (platform.value !== p) platform.value = p
    },
  )

  onBeforeUnmount(cancel)

  /** The filters in force (those in the URL), or null once the route is another page's. */
  function current(): { q: string | null; platform: string | null } | null {
    if (route.name !== page) return null
    return {
      q: text(route.query.q).trim() || null,
      platform: platformOf(route.query.platform) || null,
    }
  }

  return { search, platform, apply, current }
}
