module lockbox.dev/bench

go 1.24

require lockbox.dev/lockbox v0.0.0

replace lockbox.dev/lockbox => ../go
