module rgtp.example/pullexpose

go 1.19
