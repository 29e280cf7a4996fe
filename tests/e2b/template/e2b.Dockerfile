# The template test_sandboxes.py makes sandboxes from (`Sandbox.create("sdk-test")`):
# built by runtime/tests/e2b_sdk.rs with `cellbox template build --name sdk-test`.
FROM e2bdev/code-interpreter:latest
ENV FROM_TEMPLATE=yes
WORKDIR /home/user/project
COPY hello.txt ./
RUN echo built > /opt/built.txt
