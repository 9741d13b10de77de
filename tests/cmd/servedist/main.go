// Command servedist serves a release directory (dist/) over HTTP on
// 127.0.0.1, with Range support, for `make run`, tests and benchmarks.
// It prints its base URL on the first line of stdout (and to -url-file).
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	dir := flag.String("dir", "dist", "directory to serve")
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback only)")
	urlFile := flag.String("url-file", "", "also write the base URL to this file")
	quiet := flag.Bool("q", false, "do not log requests")
	flag.Parse()

	host, _, err := net.SplitHostPort(*addr)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		log.Fatalf("servedist: %q is not a loopback address", *addr)
	}
	if st, err := os.Stat(*dir); err != nil || !st.IsDir() {
		log.Fatalf("servedist: %s is not a directory", *dir)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("servedist: %v", err)
	}
	url := "http://" + ln.Addr().String()
	fmt.Println(url)
	if *urlFile != "" {
		if err := os.WriteFile(*urlFile+".tmp", []byte(url+"\n"), 0o644); err != nil {
			log.Fatal(err)
		}
		if err := os.Rename(*urlFile+".tmp", *urlFile); err != nil {
			log.Fatal(err)
		}
	}
	// http.FileServer answers Range requests (206) from the file itself.
	files := http.FileServer(http.Dir(*dir))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !*quiet {
			log.Printf("%s %s %s", r.Method, r.URL.Path, r.Header.Get("Range"))
		}
		files.ServeHTTP(w, r)
	})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		os.Exit(0)
	}()
	log.Fatal(http.Serve(ln, handler))
}
