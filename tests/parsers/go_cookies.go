// How Go's net/http reads a request's Cookie fields
// (`http.Request.Cookies()`), for tests/cookie_parsers.rs.
//
// Reads one request per line on stdin: its Cookie fields, each written as
// `x` and its bytes in hex, separated by spaces. Answers each line with one
// JSON line, {"readings": [{"how": ..., "cookies": [[name, value], ...]}]}.
// Go's server keeps repeated Cookie fields apart, and so does this.
package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"runtime"
	"strings"
)

type reading struct {
	How     string      `json:"how"`
	Cookies [][2]string `json:"cookies"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<24)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var fields []string
		for _, t := range strings.Fields(in.Text()) {
			b, err := hex.DecodeString(t[1:])
			if err != nil {
				panic(err)
			}
			fields = append(fields, string(b))
		}
		req := http.Request{Header: http.Header{"Cookie": fields}}
		r := reading{How: "go net/http " + runtime.Version(), Cookies: [][2]string{}}
		for _, c := range req.Cookies() {
			r.Cookies = append(r.Cookies, [2]string{c.Name, c.Value})
		}
		if err := out.Encode(map[string][]reading{"readings": {r}}); err != nil {
			panic(err)
		}
	}
}
