module github.com/cactus-comments/appservice/deploy/deploytest

go 1.26

require (
	github.com/cactus-comments/appservice/pkg v0.0.0
	github.com/moby/patternmatcher v0.6.1
	golang.org/x/mod v0.40.0
	gopkg.in/yaml.v3 v3.0.1
)

require (
	github.com/kelseyhightower/envconfig v1.4.0 // indirect
	github.com/kr/pretty v0.3.1 // indirect
	github.com/rogpeppe/go-internal v1.14.1 // indirect
	gopkg.in/check.v1 v1.0.0-20201130134442-10cb98267c6c // indirect
)

replace github.com/cactus-comments/appservice/pkg => ../../pkg
