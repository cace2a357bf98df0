// Package apitest checks HTTP responses against opsd's OpenAPI document.
// Only tests import it.
package apitest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/opsd-dev/opsd/internal/httpapi"
)

// Validator checks responses against the OpenAPI document.
type Validator struct {
	router routers.Router
}

// New loads and validates the OpenAPI document.
func New() (*Validator, error) {
	doc, err := openapi3.NewLoader().LoadFromData(httpapi.OpenAPI)
	if err != nil {
		return nil, fmt.Errorf("load openapi.json: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("openapi.json is not a valid OpenAPI 3 document: %w", err)
	}
	doc.Servers = nil // match any host
	r, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	return &Validator{router: r}, nil
}

// ErrNotDocumented is returned for a request the document has no route for.
var ErrNotDocumented = fmt.Errorf("route not in openapi.json")

// Check validates one response to req.
func (v *Validator) Check(req *http.Request, status int, header http.Header, body []byte) error {
	vreq := req.Clone(context.Background())
	vreq.Host, vreq.URL.Host, vreq.URL.Scheme = "", "", ""
	route, params, err := v.router.FindRoute(vreq)
	if err != nil {
		return fmt.Errorf("%w: %s %s: %v", ErrNotDocumented, req.Method, req.URL.Path, err)
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}},
		Status: status,
		Header: header,
		Body:   io.NopCloser(bytes.NewReader(body)),
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		return fmt.Errorf("%s %s -> %d does not match openapi.json: %w\nbody: %s", req.Method, req.URL.Path, status, err, body)
	}
	return nil
}
