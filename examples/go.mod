module lockbox.dev/examples

go 1.24.0

require (
	golang.org/x/sync v0.19.0
	lockbox.dev/lockbox v0.0.0
)

replace lockbox.dev/lockbox => ../go
