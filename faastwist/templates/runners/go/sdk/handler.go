// Package handler: the request and response types of OpenFaaS's golang-http template
// (github.com/openfaas/templates-sdk/go-http), written here from its documented shape so
// that a handler importing it builds without the network: `faastwist build` points the
// module path here with a replace directive unless the handler vendors its own copy.
package handler

import (
	"context"
	"net/http"
)

// Response is what a handler answers: the body as it is, a status (0 means 200) and
// headers to set.
type Response struct {
	Body       []byte
	StatusCode int
	Header     http.Header
}

// Request is one call: the whole body, the headers, the raw query string, the method.
type Request struct {
	Body        []byte
	Header      http.Header
	QueryString string
	Method      string
	Host        string
	ctx         context.Context
}

// Context is the request's context (done when the caller goes away).
func (r *Request) Context() context.Context {
	return r.ctx
}

// WithContext sets the request's context; a nil context is a programming error.
func (r *Request) WithContext(ctx context.Context) {
	if ctx == nil {
		panic("nil context")
	}
	r.ctx = ctx
}

// FunctionHandler is a handler as a method.
type FunctionHandler interface {
	Handle(req Request) (Response, error)
}
