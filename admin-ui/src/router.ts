import {
  createRouter,
  createWebHistory,
  type LocationQueryValue,
  type RouteRecordRaw,
  type Router,
  type RouterHistory,
} from 'vue-router'
import { bindRouter } from './api'
import { useSessionStore } from './stores/session'
import LoginView from './views/LoginView.vue'
import OverviewView from './views/OverviewView.vue'
import ConversationsView from './views/ConversationsView.vue'
import TranscriptView from './views/TranscriptView.vue'
import UsersView from './views/UsersView.vue'
import NotFoundView from './views/NotFoundView.vue'

declare module 'vue-router' {
  interface RouteMeta {
    /** Reachable without signing in. */
    public?: boolean
    title?: string
  }
}

export const BASE = '/admin/'

export const routes: RouteRecordRaw[] = [
  { path: '/login', name: 'login', component: LoginView, meta: { public: true, title: 'Sign in' } },
  { path: '/', name: 'overview', component: OverviewView, meta: { title: 'Overview' } },
  {
    path: '/conversations',
    name: 'conversations',
    component: ConversationsView,
    meta: { title: 'Conversations' },
  },
  {
    path: '/conversations/:id(\\d+)',
    name: 'conversation',
    component: TranscriptView,
    props: (route) => ({ id: Number(route.params.id) }),
    meta: { title: 'Conversation' },
  },
  { path: '/users', name: 'users', component: UsersView, meta: { title: 'Users' } },
  {
    path: '/:pathMatch(.*)*',
    name: 'not-found',
    component: NotFoundView,
    meta: { public: true, title: 'Page not found' },
  },
]

/**
 * The `next` query parameter as a path inside this app, or null when it is missing or could
 * lead anywhere else (another origin, a scheme, a protocol-relative `//host`, backslashes).
 * Both `/users` and `/admin/users` are accepted and give `/users`.
 */
export function safeNext(raw: LocationQueryValue | LocationQueryValue[] | undefined): string | null {
  const value = Array.isArray(raw) ? raw[0] : raw
  if (typeof value !== 'string' || value.length === 0 || value.length > 2048) return null
  if (!value.startsWith('/') || value.startsWith('//')) return null
  // Backslashes and control characters are read as "/" or dropped by URL parsers.
  if (/[\\\u0000-\u001f\u007f]/.test(value)) return null
  const origin = 'http://app.invalid'
  let url: URL
  try {
    url = new URL(value, origin)
  } catch {
    return null
  }
  if (url.origin !== origin) return null
  let path = url.pathname
  const base = BASE.replace(/\/$/, '')
  if (path === base || path.startsWith(`${base}/`)) path = path.slice(base.length) || '/'
  if (path === '/login') return null
  return `${path}${url.search}${url.hash}`
}

export function createAppRouter(history: RouterHistory = createWebHistory(BASE)): Router {
  const router = createRouter({
    history,
    routes,
    scrollBehavior(to, from, saved) {
      if (saved) return saved
      if (to.path === from.path) return false // only the query changed: stay where you are
      return { top: 0 }
    },
  })

  router.beforeEach((to) => {
    const session = useSessionStore()
    const signedIn = session.checkExpiry()
    if (to.name === 'login') {
      return signedIn ? (safeNext(to.query.next) ?? { name: 'overview' }) : true
    }
    if (to.meta.public || signedIn) return true
    return { name: 'login', query: to.fullPath === '/' ? {} : { next: to.fullPath } }
  })

  router.afterEach((to) => {
    if (typeof document === 'undefined') return
    const title = to.name === 'conversation' ? `Conversation #${to.params.id}` : to.meta.title
    document.title = title ? `${title} · Zapa admin` : 'Zapa admin'
  })

  bindRouter(router)
  return router
}
