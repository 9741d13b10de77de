// s5attack runs inside a sandbox for tests/attack_s5_*_test.go: what a
// hostile program sends to the network forwarder, one mode per attack.
//
//	s5attack longsni ADDR:PORT N LEN   N connections, each opening with a
//	                                   ClientHello whose server name is LEN
//	                                   bytes of valid characters; prints
//	                                   "DONE <connections made>"
//	s5attack churn ADDR:PORT N SECONDS up to N connections opened and
//	                                   closed at once (the sandbox closes
//	                                   first), for at most SECONDS; prints
//	                                   "DONE <connections made> <failures>"
package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) == 5 && os.Args[1] == "longsni" {
		n, _ := strconv.Atoi(os.Args[3])
		size, _ := strconv.Atoi(os.Args[4])
		fmt.Println(longSNI(os.Args[2], n, size))
		return
	}
	if len(os.Args) == 5 && os.Args[1] == "churn" {
		n, _ := strconv.Atoi(os.Args[3])
		secs, _ := strconv.Atoi(os.Args[4])
		fmt.Println(churn(os.Args[2], n, time.Duration(secs)*time.Second))
		return
	}
	fmt.Println("ERR usage: s5attack longsni ADDR:PORT N LEN | churn ADDR:PORT N SECONDS")
}

func longSNI(addr string, n, size int) string {
	hello := clientHello(strings.Repeat("a", size))
	made := 0
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return fmt.Sprintf("ERR after %d: %v", made, err)
		}
		made++
		c.SetDeadline(time.Now().Add(3 * time.Second))
		c.Write(hello)
		// The forwarder resets a refused name: wait for it so the
		// connection is judged before the next one opens.
		b := make([]byte, 64)
		c.Read(b)
		c.Close()
	}
	return fmt.Sprintf("DONE %d", made)
}

// clientHello is a TLS record holding a minimal ClientHello whose
// server_name extension names name.
func clientHello(name string) []byte {
	be16 := func(v int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(v)) }
	var ext []byte
	ext = append(ext, be16(0)...)
	ext = append(ext, be16(2+3+len(name))...)
	ext = append(ext, be16(3+len(name))...)
	ext = append(ext, 0)
	ext = append(ext, be16(len(name))...)
	ext = append(ext, name...)
	body := []byte{3, 3}
	body = append(body, make([]byte, 32)...)
	body = append(body, 0)
	body = append(body, 0, 2, 0x13, 0x01)
	body = append(body, 1, 0)
	body = append(body, be16(len(ext))...)
	body = append(body, ext...)
	hs := []byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}
	hs = append(hs, body...)
	rec := []byte{0x16, 3, 1}
	rec = append(rec, be16(len(hs))...)
	return append(rec, hs...)
}

// churn opens and closes connections from 32 goroutines until n are made
// or the time is up.
func churn(addr string, n int, d time.Duration) string {
	var made, failed atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for made.Load() < int64(n) && time.Now().Before(deadline) {
				c, err := net.DialTimeout("tcp", addr, 3*time.Second)
				if err != nil {
					failed.Add(1)
					continue
				}
				made.Add(1)
				c.Close()
			}
		}()
	}
	wg.Wait()
	return fmt.Sprintf("DONE %d %d", made.Load(), failed.Load())
}
