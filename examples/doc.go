// Package examples holds small programs a new Lockbox user copies from.
// Each subdirectory is a runnable main package checked by make test.
package examples
