/* A small program for the uprobe example: calls handle_request() N times (argv[1]). */
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int handle_request(int n)
{
	return n * 2 + 1;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1, sum = 0;

	for (int i = 0; i < n; i++)
		sum += handle_request(i);
	printf("%d\n", sum);
	return 0;
}
