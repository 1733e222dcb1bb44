import { onBeforeUnmount, onMounted, ref, watch, type Ref } from 'vue'

/**
 * Calls `load` while the sentinel element is near the viewport and `canLoad()` holds — also
 * again after a page arrived if the sentinel is still in view. Without IntersectionObserver
 * nothing happens (the page's "Load more" button remains).
 */
export function useInfiniteScroll(
  sentinel: Ref<HTMLElement | null>,
  canLoad: () => boolean,
  load: () => unknown,
): void {
  const visible = ref(false)
  let observer: IntersectionObserver | null = null

  onMounted(() => {
    if (typeof IntersectionObserver === 'undefined') return
    observer = new IntersectionObserver(
      (entries) => {
        for (const entry of entries) visible.value = entry.isIntersecting
      },
      { rootMargin: '0px 0px 300px 0px' },
    )
    watch(
      sentinel,
      (element, previous) => {
        if (previous) observer?.unobserve(previous)
        if (element) observer?.observe(element)
      },
      { immediate: true },
    )
  })

  watch(
    () => visible.value && canLoad(),
    (go) => {
      if (go) load()
    },
  )

  onBeforeUnmount(() => {
    observer?.disconnect()
    observer = null
  })
}
