/**
 * Operations: a readiness route at the root that reports the protected scope's key store, and Prometheus
 * metrics built from the plugin's diagnostics channels with prom-client (no dependency of the plugin).
 */
import diagnostics from 'node:diagnostics_channel'
import Fastify, { type FastifyInstance } from 'fastify'
import { Counter, Histogram, Registry } from 'prom-client'
import cloudflareAccess, {
  channelNames, cloudflareAccessStatus,
  type AcceptedMessage, type KeyFetchEndMessage, type RejectedMessage
} from '../index'

/** Metrics from the channels: rejections by code, key fetch latency and failures, cache hit ratio. */
export function accessMetrics (registry: Registry): () => void {
  const requests = new Counter({ name: 'cf_access_requests_total', help: 'Requests by outcome', labelNames: ['outcome', 'code', 'kind', 'cached'], registers: [registry] })
  const fetches = new Histogram({ name: 'cf_access_key_fetch_seconds', help: 'Key fetches by result', labelNames: ['ok'], buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers: [registry] })
  const onAccepted = (message: unknown): void => {
    const { kind, cached } = message as AcceptedMessage
    requests.inc({ outcome: 'accepted', code: '', kind, cached: String(cached) })
  }
  const onRejected = (message: unknown): void => {
    requests.inc({ outcome: 'rejected', code: (message as RejectedMessage).code, kind: '', cached: '' })
  }
  const onFetch = (message: unknown): void => {
    const { ok, durationMs } = message as KeyFetchEndMessage
    fetches.observe({ ok: String(ok) }, durationMs / 1000)
  }
  diagnostics.subscribe(channelNames.accepted, onAccepted)
  diagnostics.subscribe(channelNames.rejected, onRejected)
  diagnostics.subscribe(channelNames.keyFetchEnd, onFetch)
  return () => {
    diagnostics.unsubscribe(channelNames.accepted, onAccepted)
    diagnostics.unsubscribe(channelNames.rejected, onRejected)
    diagnostics.unsubscribe(channelNames.keyFetchEnd, onFetch)
  }
}

export async function buildOperationsApp (teamDomain: string, audience: string, registry: Registry): Promise<FastifyInstance> {
  const app = Fastify()
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain, audience })
    admin.get('/', async (request) => ({ email: request.cfAccess?.email }))
  }, { prefix: '/admin' })

  // 503 until the first key set is held, and again once it is older than maxStaleAge.
  app.get('/ready', async (_request, reply) => {
    const status = cloudflareAccessStatus(app)
    return reply.code(status.ready ? 200 : 503).send({ ready: status.ready, keys: status.registrations.map((r) => r.keys) })
  })
  app.get('/metrics', async (_request, reply) => reply.type(registry.contentType).send(await registry.metrics()))
  await app.ready()
  return app
}
