package main

import (
	"io"
	"log"
	"net/http"

	"handler/function"

	handler "github.com/openfaas/templates-sdk/go-http"
)

const contract = "golang-http"

// golang-http: the handler takes a handler.Request and returns a handler.Response and
// an error. As OpenFaaS's entry point does: the whole body is read; the response's
// headers are set, then its status (200 when 0; 500 when an error came back, which is
// logged) and its body is written as it is.
func handle(w http.ResponseWriter, r *http.Request) {
	var input []byte
	if r.Body != nil {
		defer r.Body.Close()
		body, err := io.ReadAll(r.Body)
		if err != nil {
			log.Printf("reading the request body: %v", err)
		}
		input = body
	}
	req := handler.Request{
		Body:        input,
		Header:      r.Header,
		Method:      r.Method,
		QueryString: r.URL.RawQuery,
	}
	req.WithContext(r.Context())
	result, err := function.Handle(req)
	for key, values := range result.Header {
		w.Header()[key] = values
	}
	switch {
	case err != nil:
		log.Print(err)
		w.WriteHeader(http.StatusInternalServerError)
	case result.StatusCode == 0:
		w.WriteHeader(http.StatusOK)
	default:
		w.WriteHeader(result.StatusCode)
	}
	w.Write(result.Body)
}
