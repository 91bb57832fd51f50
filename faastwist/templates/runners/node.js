// faastwist's runner for OpenFaaS's node template (node18/node20/node22 contract).
//
// It runs as the function, inside its sandbox, started as `node index.js` from the
// build folder (`faastwist build` copies this file there): Node's standard library only.
// The handler (`function/handler.js`) is required once per replica, with the
// dependencies of its package.json in `function/node_modules` (as on OpenFaaS). An HTTP
// server on 127.0.0.1:$PORT calls it per request:
//
//   module.exports = async (event, context) =>
//     context.status(200).headers({...}).succeed(body)      // or .fail(err)
//
// event.body: parsed JSON for application/json, a string for text/*, an object for a
// form, a Buffer for everything with RAW_BODY=true, else {} (a request without a
// Content-Type counts as text/plain); event.headers (lower-case names), .method,
// .query, .path. An object or array answer is sent as JSON.stringify(...) (as text/html
// unless the handler set a Content-Type), a Buffer as application/octet-stream, a
// string as text/html; fail(err) or a thrown error answers err.toString() with 500 (or
// the status set).
// A value returned without succeed() is the answer. MAX_JSON_SIZE/MAX_RAW_SIZE (bytes,
// default 100kb as body-parser's) bound the body: 413 beyond.
//
// `--check` requires the handler and exits: 0, or 3 with "FILE, line N: problem".

'use strict'

const http = require('http')
const path = require('path')

const ROOT = __dirname
const HANDLER = path.join(ROOT, 'function', 'handler.js')

function sizeOf (text, fallback) {
  const match = /^(\d+)\s*(b|kb|mb)?$/i.exec(String(text || '').trim())
  if (!match) return fallback
  const unit = { b: 1, kb: 1024, mb: 1024 * 1024 }[(match[2] || 'b').toLowerCase()]
  return Number(match[1]) * unit
}

function where (err) {
  const stack = String((err && err.stack) || '')
  const first = stack.split('\n')[0]
  const own = ROOT + path.sep
  if (err instanceof SyntaxError && first.startsWith(own)) {
    const [file, line] = first.split(':')
    return `${path.relative(ROOT, file)}, line ${line}`
  }
  for (const line of stack.split('\n').slice(1)) {
    const found = /\(?([^()\s]+):(\d+):\d+\)?$/.exec(line.trim())
    if (found && found[1].startsWith(own)) {
      return `${path.relative(ROOT, found[1])}, line ${found[2]}`
    }
  }
  return 'function/handler.js'
}

function load () {
  let handler
  try {
    handler = require(HANDLER)
  } catch (err) {
    return [null, `${where(err)}: ${err && err.name ? err.name : 'Error'}: ${err && err.message}`]
  }
  if (typeof handler !== 'function') {
    return [null, 'function/handler.js: module.exports is not a function (event, context)']
  }
  return [handler, null]
}

class FunctionEvent {
  constructor (request, url, body) {
    this.body = body
    this.headers = request.headers
    this.method = request.method
    this.query = query(url.searchParams)
    this.path = decodeURIComponent(url.pathname)
  }
}

class FunctionContext {
  constructor (done) {
    this.statusCode = 200
    this.headerValues = {}
    this.cbCalled = 0
    this.cb = done
  }

  status (code) {
    if (!code) return this.statusCode
    this.statusCode = code
    return this
  }

  headers (values) {
    if (!values) return this.headerValues
    this.headerValues = values
    return this
  }

  succeed (value) {
    this.cbCalled++
    this.cb(undefined, value)
  }

  fail (value) {
    if (String(this.statusCode) === '200') this.statusCode = 500
    this.cbCalled++
    this.cb(value, undefined)
  }
}

function query (params) {
  const out = {}
  for (const [key, value] of params) {
    if (!(key in out)) out[key] = value
    else if (Array.isArray(out[key])) out[key].push(value)
    else out[key] = [out[key], value]
  }
  return out
}

function parseBody (request, raw) {
  const hasBody = request.headers['transfer-encoding'] !== undefined ||
    request.headers['content-length'] !== undefined
  if (!hasBody) return {}   // body-parser's answer for a request without a body
  if (process.env.RAW_BODY === 'true') return raw
  const type = String(request.headers['content-type'] || 'text/plain').split(';')[0].trim().toLowerCase()
  if (type.startsWith('text/')) return raw.toString('utf8')
  if (type === 'application/json' || type.endsWith('+json')) {
    return raw.length ? JSON.parse(raw.toString('utf8')) : {}
  }
  if (type === 'application/x-www-form-urlencoded') {
    return query(new URLSearchParams(raw.toString('utf8')))
  }
  return {}
}

function send (response, status, headers, value) {
  let body = value
  const set = {}
  for (const [key, val] of Object.entries(headers || {})) set[key.toLowerCase()] = [key, val]
  let type = set['content-type'] ? String(set['content-type'][1]) : ''
  if (Buffer.isBuffer(body)) {
    if (!type) type = 'application/octet-stream'
  } else if (body === undefined || body === null) {
    body = ''
  } else if (typeof body === 'object' || typeof body === 'boolean') {
    body = JSON.stringify(body)
    if (!type) type = 'application/json'
  } else {
    body = String(body)
  }
  if (typeof body === 'string') {
    if (!type) type = 'text/html'
    if (!/;\s*charset=/i.test(type)) type += '; charset=utf-8'
    body = Buffer.from(body, 'utf8')
  }
  delete set['content-type']
  delete set['content-length']
  delete set['transfer-encoding']
  const out = { 'Content-Type': type, 'Content-Length': String(body.length) }
  for (const [key, val] of Object.values(set)) out[key] = val
  let code = Number(status)
  if (!Number.isInteger(code) || code < 100 || code > 999) code = 500
  response.writeHead(code, out)
  response.end(code === 204 || code === 304 || response.req.method === 'HEAD' ? undefined : body)
}

function serve (handler) {
  const limit = process.env.RAW_BODY === 'true'
    ? sizeOf(process.env.MAX_RAW_SIZE, 102400)
    : sizeOf(process.env.MAX_JSON_SIZE, 102400)
  const methods = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'])
  const server = http.createServer((request, response) => {
    const url = new URL(request.url, 'http://function')
    if (!methods.has(request.method)) {
      send(response, 404, {}, `Cannot ${request.method} ${url.pathname}`)
      request.resume()
      return
    }
    const chunks = []
    let size = 0
    let refused = false
    request.on('data', (chunk) => {
      size += chunk.length
      if (size > limit && !refused) {
        refused = true
        send(response, 413, {}, 'request entity too large')
      }
      if (!refused) chunks.push(chunk)
    })
    request.on('end', () => {
      if (refused) return
      let body
      try {
        body = parseBody(request, Buffer.concat(chunks))
      } catch (err) {
        send(response, 400, {}, `${err.name}: ${err.message}`)
        return
      }
      let answered = false
      const context = new FunctionContext((err, result) => {
        if (answered) return
        answered = true
        if (err) {
          console.error(err)
          const text = err && err.toString ? err.toString() : err
          send(response, err && context.statusCode === 200 ? 500 : context.statusCode, {}, text)
          return
        }
        const plain = Array.isArray(result) || (!!result && result.constructor === Object)
        send(response, context.statusCode, context.headerValues,
          plain ? JSON.stringify(result) : result)
      })
      const callback = (err, result) => context.cb(err, result)
      Promise.resolve()
        .then(() => handler(new FunctionEvent(request, url, body), context, callback))
        .then((result) => { if (!context.cbCalled) context.succeed(result) })
        .catch((err) => context.cb(err))
    })
  })
  const port = Number(process.env.PORT || process.env.http_port || 3000)
  server.listen(port, '127.0.0.1', () => {
    console.error(`node runner listening on 127.0.0.1:${port}`)
  })
}

function main () {
  const [handler, problem] = load()
  if (problem) {
    console.error(problem)
    process.exit(3)
  }
  if (process.argv.includes('--check')) process.exit(0)
  process.chdir(ROOT)
  serve(handler)
}

main()
