package function

import (
	"net/http"

	handler "github.com/openfaas/templates-sdk/go-http"
)

// Handle is called once per request: req.Body, req.Header, req.QueryString,
// req.Method; an error answers 500.
func Handle(req handler.Request) (handler.Response, error) {
	return handler.Response{
		Body:       []byte("Hello from faastwist!\n"),
		StatusCode: http.StatusOK,
		Header:     http.Header{"Content-Type": []string{"text/plain"}},
	}, nil
}
