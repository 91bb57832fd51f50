package main

import (
	"net/http"

	"handler/function"
)

const contract = "golang-middleware"

// golang-middleware: the handler is an http.HandlerFunc, called as it is.
var handle http.HandlerFunc = function.Handle
