"""`phi3e2e deploy`: a finished run's int4 model behind an Azure ML managed online endpoint.

plan       what the user asked for, checked before anything is written or sent (names, traffic, the VM size)
manifests  endpoint.yml, deployment.yml and the container's build context in gen-model/RUN/deploy/
container  the container's start command: the mounted model laid out as a project, then `phi3e2e serve`
rollout    blue/green on Azure: register, create, smoke-test one deployment, then move traffic (or roll back)
manage     list, status, logs, delete
Every module imports azure lazily, inside the functions that talk to it.
"""
