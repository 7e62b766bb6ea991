package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"

	"github.com/gorilla/mux"

	"github.com/docker-mirror/docker-mirror/proxy/errcode"
	"github.com/docker-mirror/docker-mirror/storage"
)

// PrefetchRequest is the body of POST /prefetch.
type PrefetchRequest struct {
	// Images are references as docker pull takes them: "hello-world",
	// "area51/jenkins:2.4", "nginx@sha256:...", "ghcr.io/owner/app:1".
	Images []string `json:"images"`
	// Platforms are patterns such as "linux/*"; empty means the
	// configured platforms.
	Platforms []string `json:"platforms,omitempty"`
	// Pin keeps the images out of eviction.
	Pin bool `json:"pin,omitempty"`
}

// maxPrefetchBody bounds the JSON body of POST /prefetch.
const maxPrefetchBody = 1 << 20

func (p *Proxy) postPrefetch(w http.ResponseWriter, r *http.Request) error {
	var req PrefetchRequest
	if err := ReadJSON(w, r, maxPrefetchBody, "prefetch request", &req); err != nil {
		return err
	}
	job, err := p.StartPrefetch(r.Context(), req, "prefetch")
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/prefetch/"+job.ID)
	return WriteJSON(w, http.StatusAccepted, job)
}

func (p *Proxy) getPrefetch(w http.ResponseWriter, r *http.Request) error {
	job, err := p.Job(mux.Vars(r)["id"])
	if err != nil {
		return err
	}
	return WriteJSON(w, http.StatusOK, job)
}

func (p *Proxy) listPrefetch(w http.ResponseWriter, _ *http.Request) error {
	list, err := p.Jobs(50)
	if err != nil {
		return err
	}
	if list == nil {
		list = []*storage.Job{} // none: an empty list, not null
	}
	return WriteJSON(w, http.StatusOK, struct {
		Jobs []*storage.Job `json:"jobs"`
	}{list})
}

// ReadJSON reads a request's body, one JSON object of at most limit
// bytes without unknown fields, into v: the one reader of the mirror's
// JSON APIs. Its errors are INVALID_REQUEST naming what (413 over limit).
func ReadJSON(w http.ResponseWriter, r *http.Request, limit int64, what string, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.Decode(&struct{}{}) != io.EOF {
		// A second object would be dropped unread.
		err = errors.New("the body must be one JSON object")
	}
	switch {
	case errors.Is(err, io.EOF):
		// encoding/json's own words, "EOF" and "unexpected EOF", say
		// nothing to someone who forgot curl's -d.
		err = errors.New("the body is empty: want one JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		err = errors.New("the body ends inside its JSON object")
	}
	var wrongType *json.UnmarshalTypeError
	if errors.As(err, &wrongType) {
		// Its own words name Go's struct and types (PrefetchRequest.pin
		// of type bool): the client wrote JSON.
		err = jsonTypeError(wrongType)
	}
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return errcode.New(errcode.InvalidRequest, "invalid %s: the body is over %d bytes", what, tooLarge.Limit).WithStatus(http.StatusRequestEntityTooLarge)
	}
	if err != nil {
		return errcode.New(errcode.InvalidRequest, "invalid %s: %v", what, err)
	}
	return nil
}

// jsonTypeError says what a JSON value of the wrong type is, in JSON's
// words: the field (its path in the body), the value's type and the one
// wanted.
func jsonTypeError(e *json.UnmarshalTypeError) error {
	got, number, withNumber := strings.Cut(e.Value, " ") // "number -1": one that does not fit
	switch {
	case e.Field == "":
		return fmt.Errorf("the body must be one JSON object, not a JSON %s", got)
	case withNumber && got == "number":
		return fmt.Errorf("field %q: the number %s does not fit (out of range, or not whole)", e.Field, number)
	}
	return fmt.Errorf("field %q: a JSON %s where %s is wanted", e.Field, got, jsonWanted(e.Type))
}

// jsonWanted names the JSON that decodes into t: "a string", "a list of
// strings".
func jsonWanted(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		if w := jsonWanted(t.Elem()); strings.HasPrefix(w, "a ") {
			return "a list of " + strings.TrimPrefix(w, "a ") + "s"
		}
		return "a list"
	case reflect.Pointer:
		return jsonWanted(t.Elem())
	}
	return "an object"
}

// WriteJSON answers v as indented JSON with the given status: the one
// writer of the mirror's JSON APIs (prefetch jobs, the status page's).
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("writing response: %w", err)
	}
	return nil
}
