module bpfdeploy.example/uprobe-go

go 1.19
