/** The dev proxy's HTML: the frame of every page it answers with (one style, one CSP), its login page, and the groups the login form takes. */
import { createHash } from 'node:crypto'
import type http from 'node:http'
import type { CloudflareAccessGroup } from './types'

/** The login page: the dev proxy's own path under Access's prefix. */
export const LOGIN_PATH = '/cdn-cgi/access/login'
/** Access's logout, which the emulator behind the proxy answers. */
const LOGOUT_PATH = '/cdn-cgi/access/logout'

const STYLE = 'body{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;color:#1d1d1f}' +
  'label{display:block;margin:.8rem 0 .2rem;font-weight:600}legend label{display:inline;margin:0}' +
  'input:not([type=radio]){width:100%;box-sizing:border-box;padding:.4rem;font:inherit}' +
  'fieldset{border:1px solid #ccc;border-radius:6px;margin:1rem 0;padding:.5rem 1rem}' +
  '.help{color:#555;font-size:.9rem;margin:.2rem 0}[role=alert]{color:#b00020}' +
  'code{background:#f2f2f2;padding:0 .2rem;border-radius:3px;overflow-wrap:anywhere}button{font:inherit;padding:.4rem 1.4rem}'
/** The style is allowed by its hash: no other style, no script, no framing (clickjacking), forms only to this origin. */
const CSP = `default-src 'none'; style-src 'sha256-${createHash('sha256').update(STYLE).digest('base64')}'; form-action 'self'; frame-ancestors 'none'`

export function escapeHtml (text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

/** An HTML page (never cached) in the proxy's frame; `title` is text, `body` HTML with every outside value escaped. */
export function page (res: http.ServerResponse, status: number, title: string, body: string, headers: http.OutgoingHttpHeaders = {}): void {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'content-security-policy': CSP,
    ...headers
  })
    .end('<!DOCTYPE html><html lang="en"><meta charset="utf-8"><meta name="viewport" content="width=device-width">' +
      `<title>${escapeHtml(title)}</title><style>${STYLE}</style><h1>${escapeHtml(title)}</h1>${body}`)
}

/** A group's id when the form gives only its name: SHA-256 of the name, its first 32 hex digits in UUID form (stable). */
export function groupId (name: string): string {
  const hex = createHash('sha256').update(name).digest('hex')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`
}

// eslint-disable-next-line no-control-regex
const GROUP_NAME = /^[^\u0000-\u001f\u007f<>"&,=]{1,64}$/
const GROUP_ID = /^[A-Za-z0-9._~:@+/-]{1,128}$/
export const GROUPS_RULE = 'Groups are comma-separated, each a name or name=id: a name of up to 64 characters without < > " & = or control characters, ' +
  'an id of up to 128 letters, digits and . _ ~ : @ + / -'

/**
 * The login form's groups field: comma-separated entries, each `name` (its id made by {@link groupId}) or
 * `name=id`; blank entries are skipped. The groups, or the entry that is not one.
 */
export function parseGroups (text: string): CloudflareAccessGroup[] | { invalid: string } {
  const groups: CloudflareAccessGroup[] = []
  for (const entry of text.split(',').map((part) => part.trim()).filter((part) => part !== '')) {
    const equals = entry.indexOf('=')
    const name = (equals === -1 ? entry : entry.slice(0, equals)).trim()
    const id = equals === -1 ? groupId(name) : entry.slice(equals + 1).trim()
    if (!GROUP_NAME.test(name) || !GROUP_ID.test(id)) return { invalid: entry }
    groups.push({ id, name })
  }
  return groups
}

/** Who is logged in, for the login page. */
export interface SignedIn {
  /** The email, or the service token's Client ID. */
  subject: string
  service: boolean
  groups: readonly CloudflareAccessGroup[]
}

export interface LoginPageState {
  csrf: string
  /** The path the form sends the browser to after the login. */
  returnTo: string
  /** An error to show above the form (text). */
  message?: string
  email?: string
  groups?: string
  clientId?: string
  service?: boolean
  signedIn?: SignedIn | undefined
}

function groupList (groups: readonly CloudflareAccessGroup[]): string {
  if (groups.length === 0) return 'no groups'
  return `groups ${groups.map((group) => `<code>${escapeHtml(group.name)}</code> (id <code>${escapeHtml(group.id)}</code>)`).join(', ')}`
}

/** The login form, its fields filled from `state` (every value escaped), and who is logged in now. */
export function loginPage (res: http.ServerResponse, status: number, state: LoginPageState): void {
  const { signedIn } = state
  const value = (text = ''): string => `value="${escapeHtml(text)}"`
  const checked = (yes: boolean): string => yes ? ' checked' : ''
  page(res, status, 'Access dev proxy: log in', `${state.message === undefined ? '' : `<p role="alert"><strong>${escapeHtml(state.message)}</strong></p>\n`}` +
  `${signedIn === undefined
    ? ''
    : `<p>Logged in as ${signedIn.service ? 'the service token ' : ''}<strong>${escapeHtml(signedIn.subject)}</strong>${signedIn.service ? '' : `, with ${groupList(signedIn.groups)}`}. ` +
      `<a href="${LOGOUT_PATH}">Log out</a>, or log in as someone else below.</p>\n`}` +
  `<p>Pick who you are. Your app receives a token for this identity on every request, signed with keys served at
<code>/cdn-cgi/access/certs</code>; its groups come from <code>/cdn-cgi/access/get-identity</code>.</p>
<form method="post" action="${LOGIN_PATH}">
<input type="hidden" name="csrf" value="${state.csrf}">
<fieldset><legend><label><input type="radio" name="kind" value="user"${checked(state.service !== true)}> A user</label></legend>
<label for="email">Email</label>
<input id="email" name="email" type="email" ${value(state.email ?? 'user@example.com')} autocomplete="off">
<p class="help">The token's <code>email</code>, for <code>allow.emails</code> and <code>allow.emailDomains</code>.</p>
<label for="groups">Groups</label>
<input id="groups" name="groups" ${value(state.groups)} placeholder="finance, admins=6f1c2d3e" autocomplete="off">
<p class="help">Comma-separated, each <code>name</code> or <code>name=id</code>: the name is what <code>allow.groups</code> matches,
the id what <code>allow.groupIds</code> matches. A name alone gets an id made from it (SHA-256 of the name, its first 32 hex
digits in UUID form: <code>finance</code> gets <code>${groupId('finance')}</code>).</p>
</fieldset>
<fieldset><legend><label><input type="radio" name="kind" value="service"${checked(state.service === true)}> A service token</label></legend>
<label for="client_id">Client ID</label>
<input id="client_id" name="client_id" ${value(state.clientId)} placeholder="ci.access" autocomplete="off">
<p class="help">The token's <code>common_name</code>, for <code>allow.serviceTokens</code>. Empty: a random one.</p>
</fieldset>
<label for="redirect_url">After logging in, go to</label>
<input id="redirect_url" name="redirect_url" ${value(state.returnTo)}>
<p class="help">A path of your app, such as <code>/admin/</code>; anything else goes to <code>/</code>.</p>
<p><button>Log in</button></p>
</form>`)
}
