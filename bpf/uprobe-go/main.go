// A small Go program for the uprobe-go example: it calls handleRequest N times (first argument)
// through a short call chain, so that the recorded user stacks show main.main -> main.serve ->
// main.handleRequest, as the BPF notes' bpftrace ustack example does.
package main

import (
	"fmt"
	"os"
	"strconv"
)

//go:noinline
func handleRequest(n int) int {
	return n*2 + 1
}

//go:noinline
func serve(n int) int {
	sum := 0
	for i := 0; i < n; i++ {
		sum += handleRequest(i)
	}
	return sum
}

func main() {
	n := 1
	if len(os.Args) > 1 {
		if v, err := strconv.Atoi(os.Args[1]); err == nil {
			n = v
		}
	}
	fmt.Println(serve(n))
}
