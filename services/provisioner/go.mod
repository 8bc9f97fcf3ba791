module github.com/cactus-comments/appservice/services/provisioner

go 1.26

require github.com/cactus-comments/appservice/pkg v0.0.0

replace github.com/cactus-comments/appservice/pkg => ../../pkg
