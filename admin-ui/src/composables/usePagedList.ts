import { ref, shallowRef, type Ref } from 'vue'
import { ApiError } from '../api'
import type { Page } from '../types'

/**
 * A cursor-paged listing: `reload()` starts over (new filters), `loadMore()` fetches the page
 * after `nextCursor`. Answers to requests made before the latest `reload()` are dropped.
 */
export function usePagedList<T>(fetchPage: (cursor: number | null) => Promise<Page<T>>) {
  const items: Ref<T[]> = shallowRef([])
  const nextCursor = ref<number | null>(null)
  const loading = ref(false)
  const loaded = ref(false)
  const error = ref<ApiError | null>(null)
  let generation = 0

  async function fetchInto(cursor: number | null, append: boolean): Promise<void> {
    const mine = ++generation
    loading.value = true
    error.value = null
    try {
      const page = await fetchPage(cursor)
      if (mine !== generation) return
      items.value = append ? [...items.value, ...page.items] : page.items
      nextCursor.value = page.next_cursor
      loaded.value = true
    } catch (caught) {
      if (mine !== generation) return
      error.value =
        caught instanceof ApiError
          ? caught
          : new ApiError({ status: 0, error: 'client_error', detail: String(caught) })
    } finally {
      if (mine === generation) loading.value = false
    }
  }

  function reload(): Promise<void> {
    items.value = []
    nextCursor.value = null
    loaded.value = false
    return fetchInto(null, false)
  }

  function loadMore(): Promise<void> {
    if (loading.value || nextCursor.value === null) return Promise.resolve()
    return fetchInto(nextCursor.value, true)
  }

  /** Put a changed item in place (e.g. after an update). */
  function replace(match: (item: T) => boolean, next: T): void {
    items.value = items.value.map((item) => (match(item) ? next : item))
  }

  return { items, nextCursor, loading, loaded, error, reload, loadMore, replace }
}
