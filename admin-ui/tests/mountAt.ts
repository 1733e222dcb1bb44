import { flushPromises, mount, type VueWrapper } from '@vue/test-utils'
import App from '../src/App.vue'
import { freshApp, storeSession } from './helpers'
import type { Router } from 'vue-router'

/** Sign in (stored session), open `path` and mount the whole app there. */
export async function mountAt(path: string): Promise<{ wrapper: VueWrapper; router: Router }> {
  storeSession()
  const { pinia, router } = freshApp()
  await router.push(path)
  const wrapper = mount(App, { global: { plugins: [pinia, router] }, attachTo: document.body })
  await flushPromises()
  return { wrapper, router }
}
