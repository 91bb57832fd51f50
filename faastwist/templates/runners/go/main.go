// faastwist's runner for OpenFaaS's Go templates (golang-middleware, golang-http).
//
// `faastwist build` puts this file, with the contract's adapter (contract_*.go), in
// the package faastwist_main of the handler's own module (a copy of the handler folder,
// module handler/function as OpenFaaS's templates make it) and compiles it with
// `go build` as the function, in its sandbox: the handler's package is linked in and
// its init() runs once per replica. The binary serves the handler over HTTP on
// 127.0.0.1:$PORT from the handler folder (so ./static/... is found as on OpenFaaS) and,
// on SIGTERM, stops accepting and finishes the requests it has (up to write_timeout).
//
// read_timeout and write_timeout (seconds or Go durations, default 10s) are the
// template's own settings; headers are limited to 1 MiB as there.
package main

import (
	"context"
	"errors"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

const defaultTimeout = 10 * time.Second

// duration reads OpenFaaS's timeout settings: bare seconds or a Go duration.
func duration(value string, fallback time.Duration) time.Duration {
	if value == "" {
		return fallback
	}
	if seconds, err := strconv.Atoi(value); err == nil && seconds >= 0 {
		return time.Duration(seconds) * time.Second
	}
	if parsed, err := time.ParseDuration(value); err == nil {
		return parsed
	}
	return fallback
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("[go runner] ")
	if executable, err := os.Executable(); err == nil {
		// the binary lives in the handler folder's copy: OpenFaaS's working folder
		// holds the handler's static/ folder, so does this one
		if err := os.Chdir(filepath.Dir(executable)); err != nil {
			log.Printf("cannot enter the handler folder: %v", err)
		}
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8082"
	}
	readTimeout := duration(os.Getenv("read_timeout"), defaultTimeout)
	writeTimeout := duration(os.Getenv("write_timeout"), defaultTimeout)
	mux := http.NewServeMux()
	mux.HandleFunc("/", handle)
	server := &http.Server{
		Handler:        mux,
		ReadTimeout:    readTimeout,
		WriteTimeout:   writeTimeout,
		MaxHeaderBytes: 1 << 20,
	}
	listener, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		log.Fatalf("cannot listen on 127.0.0.1:%s: %v", port, err)
	}
	stopped := make(chan struct{})
	go func() {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
		<-signals
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		defer cancel()
		if err := server.Shutdown(ctx); err != nil {
			log.Printf("shutdown: %v", err)
		}
		close(stopped)
	}()
	log.Printf("%s listening on 127.0.0.1:%s", contract, port)
	if err := server.Serve(listener); !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("serve: %v", err)
	}
	<-stopped
}
