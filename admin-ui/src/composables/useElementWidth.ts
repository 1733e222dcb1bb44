import { onBeforeUnmount, onMounted, ref, type Ref } from 'vue'

/** The element's content width in CSS pixels, following resizes (`fallback` until known). */
export function useElementWidth(element: Ref<HTMLElement | null>, fallback = 640): Ref<number> {
  const width = ref(fallback)
  let observer: ResizeObserver | null = null

  function measure(): void {
    const measured = element.value?.clientWidth ?? 0
    if (measured > 0) width.value = Math.floor(measured)
  }

  onMounted(() => {
    measure()
    if (typeof ResizeObserver !== 'undefined' && element.value) {
      observer = new ResizeObserver(measure)
      observer.observe(element.value)
    }
  })
  onBeforeUnmount(() => observer?.disconnect())
  return width
}
