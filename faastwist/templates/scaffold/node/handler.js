'use strict'

// Called once per request: event.body, event.headers, event.method, event.query,
// event.path; answer with context.status(...).headers({...}).succeed(body) or .fail(err).
module.exports = async (event, context) => {
  return context
    .status(200)
    .headers({ 'Content-Type': 'text/plain' })
    .succeed('Hello from faastwist!')
}
