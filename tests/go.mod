module lockbox.dev/tests

go 1.24.0

require (
	github.com/creack/pty v1.1.24
	golang.org/x/sys v0.37.0
	lockbox.dev/lockbox v0.0.0
)

require github.com/ebitengine/purego v0.9.1 // indirect

replace lockbox.dev/lockbox => ../go
