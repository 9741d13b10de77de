module lockbox.dev/lockbox

go 1.24
