package function

import (
	"net/http"
)

// Handle is called once per request: read r (r.Body, r.Header, r.URL.Query(),
// r.Method) and write the answer to w.
func Handle(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	w.Write([]byte("Hello from faastwist!\n"))
}
