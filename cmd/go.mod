module github.com/cactus-comments/appservice/cmd

go 1.26

require (
	github.com/cactus-comments/appservice/pkg v0.0.0
	github.com/cactus-comments/appservice/services/botworker v0.0.0
	github.com/cactus-comments/appservice/services/gateway v0.0.0
	github.com/cactus-comments/appservice/services/provisioner v0.0.0
)

replace (
	github.com/cactus-comments/appservice/pkg => ../pkg
	github.com/cactus-comments/appservice/services/botworker => ../services/botworker
	github.com/cactus-comments/appservice/services/gateway => ../services/gateway
	github.com/cactus-comments/appservice/services/provisioner => ../services/provisioner
)
