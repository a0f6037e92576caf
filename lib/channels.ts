/** The plugin's `node:diagnostics_channel` events: named channels, message shapes, and publish helpers that cost one branch without a subscriber. */
import diagnostics from 'node:diagnostics_channel'

/** The channel names, for `diagnostics_channel.subscribe(name, listener)`. */
export const channelNames = {
  /** A request admitted: {@link AcceptedMessage}. */
  accepted: 'fastify-cloudflare-access:accepted',
  /** A request refused (any 401, 403, 500 or 503 of the plugin): {@link RejectedMessage}. */
  rejected: 'fastify-cloudflare-access:rejected',
  /** A valid token that a policy refused (also published on `rejected` as a 403): {@link DeniedMessage}. */
  denied: 'fastify-cloudflare-access:denied',
  /** A key fetch starts: {@link KeyFetchStartMessage}. */
  keyFetchStart: 'fastify-cloudflare-access:keys:fetch:start',
  /** A key fetch ends, well or not: {@link KeyFetchEndMessage}. */
  keyFetchEnd: 'fastify-cloudflare-access:keys:fetch:end',
  /** A fetched set differs from the one before: {@link KeyRotationMessage}. */
  keyRotation: 'fastify-cloudflare-access:keys:rotation',
  /** A refresh failed and the last good set keeps serving: {@link KeyStaleMessage}. */
  keyStale: 'fastify-cloudflare-access:keys:stale',
  /** The set grew older than `maxStaleAge` and was dropped (requests get 503): {@link KeyDroppedMessage}. */
  keyDropped: 'fastify-cloudflare-access:keys:dropped',
  /** An identity lookup ended (from the cache or the endpoint): {@link IdentityMessage}. */
  identity: 'fastify-cloudflare-access:identity'
} as const

export interface AcceptedMessage {
  /** The route's URL pattern (`/admin/:id`), never the request's URL. */
  route: string | undefined
  kind: 'user' | 'service'
  /** Whether the verified-token cache answered (no RSA verify). */
  cached: boolean
}
export interface RejectedMessage {
  route: string | undefined
  /** The error's code (`FST_CF_ACCESS_…`, or your own from `authorize`); `''` for an error without one. */
  code: string
  statusCode: number
}
export interface DeniedMessage {
  route: string | undefined
  /** The grant kinds the refusing policy has (`emails`, `emailDomains`, `groups`, `groupIds`, `serviceTokens`, `authorize`). */
  grants: string[]
  kind: 'user' | 'service'
}
export interface KeyFetchStartMessage {
  url: string
  /** Why: the first fetch, a periodic refresh or retry, or an unknown kid. */
  reason: 'refresh' | 'unknown-kid'
}
export interface KeyFetchEndMessage {
  url: string
  ok: boolean
  durationMs: number
  /** The kids of the new set (when ok). */
  kids?: string[]
  /** What failed (when not ok); never a token. */
  error?: string
}
export interface KeyRotationMessage {
  added: string[]
  removed: string[]
}
export interface KeyStaleMessage {
  /** How old the set that keeps serving is. */
  ageMs: number
  failures: number
}
export interface KeyDroppedMessage {
  ageMs: number
}
export interface IdentityMessage {
  cached: boolean
  ok: boolean
  durationMs: number
  /** The error code when not ok. */
  code?: string
}

/** Published as `channel.hasSubscribers && channel.publish(message)`: nobody listening, no message built. */
export const channels = {
  accepted: diagnostics.channel(channelNames.accepted),
  rejected: diagnostics.channel(channelNames.rejected),
  denied: diagnostics.channel(channelNames.denied),
  keyFetchStart: diagnostics.channel(channelNames.keyFetchStart),
  keyFetchEnd: diagnostics.channel(channelNames.keyFetchEnd),
  keyRotation: diagnostics.channel(channelNames.keyRotation),
  keyStale: diagnostics.channel(channelNames.keyStale),
  keyDropped: diagnostics.channel(channelNames.keyDropped),
  identity: diagnostics.channel(channelNames.identity)
}
