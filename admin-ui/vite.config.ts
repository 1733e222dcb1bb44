import { fileURLToPath, URL } from 'node:url'
import { defineConfig } from 'vitest/config'
import vue from '@vitejs/plugin-vue'

// The build is committed in ../bot/admin/static/ and served by the service at /admin/.
// It must be reproducible (CI rebuilds it and diffs), so: no sourcemaps, no timestamps,
// content-hashed names only.
const backend = 'http://localhost:8080'

export default defineConfig({
  base: '/admin/',
  plugins: [vue()],
  resolve: {
    alias: { '@': fileURLToPath(new URL('./src', import.meta.url)) },
  },
  build: {
    outDir: '../bot/admin/static',
    emptyOutDir: true,
    sourcemap: false,
    target: 'es2020',
    // One stylesheet and one script: the app is small and the CSP allows only 'self'.
    modulePreload: { polyfill: false },
    reportCompressedSize: true,
  },
  server: {
    port: 5173,
    proxy: {
      '/api': backend,
      '/ready': backend,
    },
  },
  test: {
    environment: 'happy-dom',
    include: ['tests/**/*.spec.ts'],
    restoreMocks: true,
    unstubGlobals: true,
  },
})
